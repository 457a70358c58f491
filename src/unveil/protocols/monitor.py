"""The run's own per-epoch test accuracy (a ``classify`` monitor): how the supervised-from-scratch row is
evaluated, since its training *is* the fine-tune protocol from random weights. No ``unveil eval`` verb:
a suite lists it, and its numbers stand in the fine-tune columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import require
from ._shared import read_run, save_result, settings_record
from .base import PROTOCOLS, Protocol


def evaluate_monitor(run: str | Path, metric: str = "test") -> dict[str, Any]:
    """Best and last epoch of the run's own per-epoch monitor (``test_top1``: a classify monitor).

    This is how the supervised-from-scratch row is evaluated: its training *is* the fine-tune
    protocol from random weights, so its own per-epoch test accuracy is the comparable number."""
    from ..runs.logs import EPOCH_LOG, read_csv

    run_dir, _, state, cfg = read_run(run)
    rows = [r for r in read_csv(run_dir / EPOCH_LOG) if r.get(f"{metric}_top1") is not None]
    require(bool(rows), f"{run_dir} logged no {metric}_top1 per epoch: train it with train.monitor=classify")
    best = max(rows, key=lambda r: r[f"{metric}_top1"])
    result = {"protocol": "monitor", "metric": f"{metric}_top1", "last_top1": rows[-1][f"{metric}_top1"],
              "last_top5": rows[-1].get(f"{metric}_top5"), "best_top1": best[f"{metric}_top1"],
              "best_top5": best.get(f"{metric}_top5"), "best_epoch": int(best["epoch"]), "history": rows,
              "note": "the run's own per-epoch test accuracy; best_* selects the epoch on the test set",
              "settings": settings_record("monitor", {"metric": metric}, state, cfg)}
    save_result(run_dir, "monitor", result)
    return result


def _check(settings: dict[str, Any]) -> None:
    metric = settings.get("metric", "test")
    require(isinstance(metric, str) and metric.isidentifier(),
            f"monitor.metric must name a logged accuracy (test for test_top1), got {metric!r}")


PROTOCOLS.add("monitor", Protocol(
    name="monitor", help="the run's own per-epoch test accuracy (train.monitor=classify)", evaluate=evaluate_monitor,
    check=_check, order=40, fills="finetune",
    fills_note="fine-tune columns: its own training from random weights (the paper's supervised baseline)"))
