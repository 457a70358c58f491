"""Run a suite: pretrain each entry, evaluate it, write the table after every entry.

Resumable by construction, so a suite that takes an afternoon survives interruptions: an entry
whose pretraining finished (``summary.json`` beside its checkpoint) is not retrained, an
interrupted one continues from its last checkpoint, and an evaluation whose ``eval_<kind>.json``
exists is read back instead of redone. A finished run trained with other settings is an error,
not a silent reuse.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError, require
from ..eval import protocols
from ..io import atomic_write_text
from ..train import engine
from ..train.checkpoint import CKPT_NAME, CONFIG_NAME
from ..train.logs import EPOCH_LOG, SUMMARY, read_csv
from .spec import Planned, Suite, check_only, load_suite, plan_suite
from .table import result_row, write_results

TIMINGS = "bench_timings.json"
# Settings that may change between attempts without changing what a run computes.
_VOLATILE = {("out",), ("data", "root"), ("train", "progress"), ("train", "device"), ("train", "log_every_steps"),
             ("train", "ckpt_every_steps")}


def evaluate_monitor(run: str | Path, metric: str = "test") -> dict[str, Any]:
    """Best and last epoch of the run's own per-epoch monitor (``test_top1``: a classify monitor).

    This is how the supervised-from-scratch row is evaluated: its training *is* the fine-tune
    protocol from random weights, so its own per-epoch test accuracy is the comparable number."""
    run_dir = Path(run)
    rows = [r for r in read_csv(run_dir / EPOCH_LOG) if r.get(f"{metric}_top1") is not None]
    require(bool(rows), f"{run_dir} logged no {metric}_top1 per epoch: train it with train.monitor=classify")
    best = max(rows, key=lambda r: r[f"{metric}_top1"])
    result = {"protocol": "monitor", "metric": f"{metric}_top1", "last_top1": rows[-1][f"{metric}_top1"],
              "last_top5": rows[-1].get(f"{metric}_top5"), "best_top1": best[f"{metric}_top1"],
              "best_top5": best.get(f"{metric}_top5"), "best_epoch": int(best["epoch"]), "history": rows,
              "note": "the run's own per-epoch test accuracy; best_* selects the epoch on the test set"}
    atomic_write_text(run_dir / "eval_monitor.json", json.dumps(result, indent=2))
    return result


def protocol_function(kind: str) -> Callable[..., dict[str, Any]]:
    return {"finetune": protocols.evaluate_finetune, "linear": protocols.evaluate_linear,
            "knn": protocols.evaluate_knn, "monitor": evaluate_monitor}[kind]


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = yaml.safe_load(yaml.safe_dump(cfg))  # tuples -> lists, as saved
    for path in _VOLATILE:
        node = cfg
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return cfg


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{where}{k}.")]
    return [] if a == b else [f"{where.rstrip('.')}: {b!r} -> {a!r}"]


def _check_same_settings(p: Planned) -> None:
    saved = yaml.safe_load((p.run_dir / CONFIG_NAME).read_text()) if (p.run_dir / CONFIG_NAME).is_file() else None
    if saved is None:
        return
    diff = _differences(_comparable(p.cfg), _comparable(saved))
    require(not diff, f"{p.run_dir} was trained with other settings ({'; '.join(diff[:3])}): rerun with the same "
            "scale and overrides to resume it, or choose another --out")


def pretrain_state(run_dir: Path) -> str:
    """'done', 'partial' (a checkpoint to continue from) or 'new'."""
    if (run_dir / CKPT_NAME).is_file():
        return "done" if (run_dir / SUMMARY).is_file() else "partial"
    return "new"


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
    evals = {k: json.loads((p.run_dir / f"eval_{k}.json").read_text()) for k in p.evals
             if (p.run_dir / f"eval_{k}.json").is_file()}
    return {"status": "done" if len(evals) == len(p.evals) else "evaluations missing", "evals": evals}


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
    for kind, settings in p.evals.items():
        saved = p.run_dir / f"eval_{kind}.json"
        if saved.is_file():
            results[kind] = json.loads(saved.read_text())
            continue
        _log(f"{p.entry.name}: {kind} evaluation {settings or ''}")
        start = time.perf_counter()
        results[kind] = protocol_function(kind)(p.run_dir, **settings)
        _record(p.run_dir, f"{kind}_s", time.perf_counter() - start)
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
