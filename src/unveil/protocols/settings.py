"""What an evaluation was computed with, and how two configs differ; no torch here.

Suites and ``evaluate_finetune`` reuse earlier work only when it was made with the same settings;
these helpers say whether it was, and name the first differences in one line when it was not.
"""

from __future__ import annotations

from typing import Any

import yaml

# Config entries that may change between attempts without changing what a run computes.
VOLATILE = {("out",), ("data", "root"), ("train", "progress"), ("train", "device"), ("train", "log_every_steps"),
            ("train", "ckpt_every_steps")}


def plain(value: Any) -> Any:
    """As saved in YAML/JSON (tuples -> lists), so a fresh value compares equal to a saved one."""
    return yaml.safe_load(yaml.safe_dump(value))


def comparable(cfg: dict[str, Any], volatile: set[tuple[str, ...]] = VOLATILE) -> dict[str, Any]:
    """The config without the entries that do not change the result."""
    cfg = plain(cfg)
    for path in volatile:
        node = cfg
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return cfg


def differences(new: Any, old: Any, where: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [d for k in sorted(set(new) | set(old), key=str)
                for d in differences(new.get(k), old.get(k), f"{where}{k}.")]
    return [] if new == old else [f"{where.rstrip('.') or 'value'}: {old!r} -> {new!r}"]


def stale_reason(saved: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """None when a saved evaluation was computed with ``wanted``; else why it cannot be reused."""
    if saved is None:
        return None
    recorded = saved.get("settings")
    if recorded is None:
        return "it records no settings (made by an older unveil)"
    diff = differences(plain(wanted), recorded)
    return f"it was computed with other settings ({'; '.join(diff[:3])})" if diff else None
