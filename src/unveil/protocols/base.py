"""What an evaluation protocol is, and the registry of them.

Each public module of ``unveil.protocols`` defines one protocol (its ``evaluate_<name>`` function, its
command-line options, its settings check, its table columns) and registers it with ``PROTOCOLS.add``.
Everything else is generated from the registry: the ``unveil eval`` verbs (commands/evaluate.py), the
protocols a suite may list and check at planning time (bench/spec.py), and the suite table's columns
(bench/table.py). Adding a protocol is one new file here.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, require
from ..registry import Registry


@dataclass(frozen=True)
class Column:
    """A column of a suite's table, filled from one saved result (``eval_<slot>.json``).

    ``fields`` are (CSV column, key of the result); the Markdown table shows the first two as
    ``best / last`` when there are two ``shown``, else the one number."""

    label: str
    slot: str
    fields: tuple[tuple[str, str], ...]
    shown: int = 1


def _as_given(args: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    return args


def _no_check(settings: dict[str, Any]) -> None:
    return None


def _own_slot(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda settings: name


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: the function that evaluates a run, and what the CLI, suites and the table
    need to know about it.

    * ``evaluate(run, **settings) -> result``: computes, saves ``eval_<slot>.json`` in the run directory
      with a ``settings`` record, returns the result (``top1`` or ``best_top1``/``last_top1``, and
      ``untrained`` when asked for the baseline).
    * ``add_arguments(parser)``: the verb's own options, each ``dest`` named after a parameter of
      ``evaluate`` (``run``, ``--device``, ``--eval-data`` and ``--baseline`` are added for every verb);
      None: no ``unveil eval`` verb (the monitor reads what training logged).
    * ``check(settings)``: bad values in one line, before any work (CLI and suite planning alike).
    * ``record(args, run_config)``: the settings as recorded, so a suite compares like with like.
    * ``slot_of(settings)``: where a result goes when one protocol has several readings (kNN on the head).
    * ``columns``: the table's columns; ``fills``: another protocol whose columns this one's results fill
      when that one did not run (with ``fills_note``); ``paper_label``: a column for the paper's number.
    """

    name: str
    help: str
    evaluate: Callable[..., dict[str, Any]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str = ""
    check: Callable[[dict[str, Any]], None] = _no_check
    record: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = _as_given
    slot_of: Callable[[dict[str, Any]], str] | None = None
    columns: tuple[Column, ...] = ()
    fills: str | None = None
    fills_note: str = ""
    paper_label: str | None = None
    order: int = 50
    not_settings: frozenset[str] = field(default=frozenset({"run", "device", "baseline"}))

    def slot(self, settings: dict[str, Any]) -> str:
        """The saved result's name for these settings (the protocol's own name unless ``slot_of`` says)."""
        return self.slot_of(settings) if self.slot_of is not None else self.name

    def slots(self) -> tuple[str, ...]:
        """Every slot the protocol can write: its name and its columns' slots."""
        return tuple(dict.fromkeys((self.name, *(c.slot for c in self.columns))))

    def bind(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` checked against ``evaluate``'s parameters (a misspelt name is one line)."""
        try:
            inspect.signature(self.evaluate).bind("run", **settings)
        except TypeError as exc:
            raise UserError(f"bad {self.name} setting(s) {sorted(settings)} ({exc})") from None
        return settings


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol", "unveil.protocols")


def ordered() -> list[Protocol]:
    """Every registered protocol, in the order of its verbs and columns."""
    return sorted(PROTOCOLS.values(), key=lambda p: (p.order, p.name))


def protocol_function(kind: str) -> Callable[..., dict[str, Any]]:
    """The function behind a suite's ``evaluate: [{kind: settings}]`` item."""
    return PROTOCOLS.lookup(kind).evaluate


def check_settings(kind: str, settings: dict[str, Any]) -> None:
    """Unknown names and bad values of a protocol's settings fail in one line before any work."""
    protocol = PROTOCOLS.lookup(kind)
    protocol.bind(settings)
    protocol.check(settings)


def slot_protocol(slot: str) -> str:
    """The protocol behind a saved result's name (``knn_head`` -> ``knn``, ``linear_1pct`` -> ``linear``)."""
    for protocol in ordered():
        if slot in protocol.slots() or slot.startswith(f"{protocol.name}_"):
            return protocol.name
    raise UserError(f"no evaluation protocol writes eval_{slot}.json; known: {', '.join(PROTOCOLS)}")


def current_settings(kind: str, run: str | Path, **settings: Any) -> dict[str, Any]:
    """The ``settings`` record ``protocol_function(kind)(run, **settings)`` would save now."""
    from ._shared import run_summary, settings_record

    protocol = PROTOCOLS.lookup(kind)
    bound = inspect.signature(protocol.evaluate).bind(run, **settings)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k not in protocol.not_settings}
    state, cfg = run_summary(run)
    return settings_record(kind, protocol.record(args, cfg), state, cfg)


def is_number(value: Any, low: float = 0.0, *, strict: bool = False) -> bool:
    """A real number (not a bool) above ``low`` (or at least ``low``)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and (value > low if strict else value >= low)


def require_positive(settings: dict[str, Any], *keys: str, integer: bool = False) -> None:
    """Each present ``key`` is a number > 0 (an int with ``integer``), else one line naming it."""
    for key in keys:
        if key in settings:
            value = settings[key]
            ok = is_number(value, strict=True) and (not integer or isinstance(value, int))
            require(ok, f"{key.replace('_', '-')} must be {'an integer' if integer else 'a number'} > 0, got {value!r}")
