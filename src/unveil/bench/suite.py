"""Run a suite: pretrain each entry, evaluate it, write the table after every entry.

Resumable by construction, so a suite that takes an afternoon survives interruptions: an entry
whose pretraining finished (``summary.json`` beside its checkpoint) is not retrained, an
interrupted one continues from its last checkpoint, and an evaluation whose ``eval_<kind>.json``
records the same settings (protocol, every argument, data, checkpoint step) is read back instead
of redone; one made with other settings runs again (one stderr line says why). An interrupted
fine-tune continues from its own checkpoint. A finished run trained with other settings is an
error, not a silent reuse.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError, require
from ..io import atomic_write_text
from ..protocols.base import current_settings, protocol_function
from ..protocols.settings import comparable, differences, stale_reason
from ..runs.checkpoint import CONFIG_NAME
from ..train import engine
from .spec import Planned, Suite, check_only, load_suite, plan_suite, pretrain_state, slot_protocol
from .table import result_row, write_results

TIMINGS = "bench_timings.json"


def _check_same_settings(p: Planned) -> None:
    saved = yaml.safe_load((p.run_dir / CONFIG_NAME).read_text()) if (p.run_dir / CONFIG_NAME).is_file() else None
    if saved is None:
        return
    diff = differences(comparable(p.cfg), comparable(saved))
    require(not diff, f"{p.run_dir} was trained with other settings ({'; '.join(diff[:3])}): rerun with the same "
            "scale and overrides to resume it, or choose another --out")


def _log(message: str) -> None:
    print(f"unveil bench: {message}", file=sys.stderr, flush=True)


def _timings(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TIMINGS
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(run_dir: Path, key: str, seconds: float) -> None:
    times = {**_timings(run_dir), key: round(seconds, 1)}
    atomic_write_text(run_dir / TIMINGS, json.dumps(times, indent=2))


def on_disk(p: Planned) -> dict[str, Any]:
    """What earlier invocations left for an entry, so the table also shows entries not run now."""
    if pretrain_state(p.run_dir) != "done":
        return {"status": "not run" if pretrain_state(p.run_dir) == "new" else "pretraining unfinished"}
    try:
        _check_same_settings(p)
    except UserError:
        return {"status": "not run (the run on disk has other settings)"}
    evals = {}
    for slot, settings in p.evals.items():
        saved = _saved_eval(p.run_dir, slot)
        if saved is not None and stale_reason(saved, current_settings(slot_protocol(slot), p.run_dir, **settings)) is None:
            evals[slot] = saved  # numbers made with other settings are never shown
    return {"status": "done" if len(evals) == len(p.evals) else "evaluations missing", "evals": evals}


def _saved_eval(run_dir: Path, slot: str) -> dict[str, Any] | None:
    path = run_dir / f"eval_{slot}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # unreadable: evaluate again


def run_entry(p: Planned) -> dict[str, dict[str, Any]]:
    """Pretrain (or continue, or skip) one entry, then run its missing evaluations."""
    state = pretrain_state(p.run_dir)
    if state != "new":
        _check_same_settings(p)
    if state == "done":
        _log(f"{p.entry.name}: pretraining already finished, kept")
    else:
        _log(f"{p.entry.name}: {'continuing' if state == 'partial' else 'starting'} pretraining in {p.run_dir}")
        before = _timings(p.run_dir).get("pretrain_s", 0.0) if state == "partial" else 0.0
        start = time.perf_counter()
        engine.train(p.cfg, resume=p.run_dir if state == "partial" else None)
        _record(p.run_dir, "pretrain_s", before + time.perf_counter() - start)
    results = {}
    for slot, settings in p.evals.items():
        kind = slot_protocol(slot)  # knn_head: the knn protocol on the head embedding
        saved = _saved_eval(p.run_dir, slot)
        reason = stale_reason(saved, current_settings(kind, p.run_dir, **settings))
        if saved is not None and reason is None:
            results[slot] = saved  # same protocol, arguments, data and checkpoint step
            continue
        if saved is not None:
            _log(f"{p.entry.name}: eval_{slot}.json is not reused, {reason}: evaluating again")
        _log(f"{p.entry.name}: {kind} evaluation {settings or ''}")
        start = time.perf_counter()
        results[slot] = protocol_function(kind)(p.run_dir, **settings)
        _record(p.run_dir, f"{slot}_s", time.perf_counter() - start)
    return results


def run_suite(suite: str | Path | Suite, scale: str, out_dir: str | Path, overrides: list[str] | None = None,
              only: list[str] | None = None, figures: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the suite at ``scale`` under ``out_dir``; return one result row per entry.

    ``results.md`` / ``results.csv`` are rewritten after every entry. An entry that fails with a
    ``UserError`` is recorded as failed and the others still run; the error is raised at the end.
    """
    from .figures import write_figures

    spec = suite if isinstance(suite, Suite) else load_suite(suite)
    out_dir = Path(out_dir)
    check_only(spec, only)
    planned = plan_suite(spec, scale, out_dir, overrides)  # every entry: the table shows them all
    selected = [p for p in planned if not only or p.entry.name in only]
    outcomes = {p.entry.name: on_disk(p) for p in planned}

    def write() -> list[dict[str, Any]]:
        rows = [result_row(p, outcomes[p.entry.name], _timings(p.run_dir)) for p in planned]
        figs = write_figures(planned, out_dir / "figures") if figures else []
        write_results(out_dir, spec, scale, rows, figs)
        return rows

    failures = []
    rows = write()
    for i, p in enumerate(selected, 1):
        _log(f"entry {i}/{len(selected)}: {p.entry.name} ({p.entry.recipe}, scale {scale})")
        try:
            outcomes[p.entry.name] = {"status": "done", "evals": run_entry(p)}
        except UserError as exc:
            outcomes[p.entry.name] = {"status": f"failed: {exc}"}
            failures.append(f"{p.entry.name}: {exc}")
            _log(f"{p.entry.name} failed: {exc}")
        except KeyboardInterrupt:
            outcomes[p.entry.name] = {"status": "interrupted"}
            write()
            raise
        rows = write()
    if failures:
        raise UserError(f"{len(failures)} of {len(selected)} entries failed (see {out_dir / 'results.md'}): "
                        + " | ".join(failures))
    return rows
