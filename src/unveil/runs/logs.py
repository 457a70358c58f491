"""What a run writes for people: CSV logs (TensorBoard when installed), a progress bar, a summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..io import atomic_write_text

STEP_LOG = "log.csv"
EPOCH_LOG = "metrics.csv"
SUMMARY = "summary.json"


def _rewrite_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    lines = [",".join(fields)] + [",".join(str(row.get(f, "")) for f in fields) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(value: str) -> Any:
    try:
        return float(value) if value not in ("", None) else None
    except ValueError:
        return value


class RunLogger:
    """Step rows go to log.csv, epoch rows (monitor metrics) to metrics.csv.

    Rows are buffered and the files rewritten atomically, so an interrupted run never leaves a
    torn line; on resume, rows after the checkpoint's step are dropped.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.steps = read_csv(self.run_dir / STEP_LOG) if resume_step is not None else []
        self.epochs = read_csv(self.run_dir / EPOCH_LOG) if resume_step is not None else []
        if resume_step is not None:
            self.steps = [r for r in self.steps if r.get("step") is not None and r["step"] <= resume_step]
            self.epochs = [r for r in self.epochs if r.get("step") is not None and r["step"] <= resume_step]
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except Exception:  # tensorboard not installed: CSV only
                self.tb = None

    def info(self, message: str) -> None:
        if self.enabled:
            print(f"unveil: {message}", file=sys.stderr)

    def progress(self, total: int, initial: int, show: bool = True) -> tqdm:
        return tqdm(total=total, initial=initial, disable=not (self.enabled and show), unit="step",
                    dynamic_ncols=True, leave=True)

    def step(self, **row: Any) -> None:
        if not self.enabled:
            return
        self.steps.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, row["step"])
        if len(self.steps) % 10 == 0:
            _rewrite_csv(self.run_dir / STEP_LOG, self.steps)

    def flush(self) -> None:
        """Write the buffered step rows (at every checkpoint, so the log matches what a resume keeps)."""
        if self.enabled and self.steps:
            _rewrite_csv(self.run_dir / STEP_LOG, self.steps)

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.epochs.append(row)
        _rewrite_csv(self.run_dir / EPOCH_LOG, self.epochs)
        _rewrite_csv(self.run_dir / STEP_LOG, self.steps)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"monitor/{k}", v, row["step"])

    def finish(self, history: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        _rewrite_csv(self.run_dir / STEP_LOG, self.steps)
        summary = {"final": history[-1] if history else {}, "epochs": history,
                   "images_per_s_mean": _mean([r["images_per_s"] for r in self.steps[1:]])}
        atomic_write_text(self.run_dir / SUMMARY, json.dumps(summary, indent=2))
        if self.tb is not None:
            self.tb.close()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
