"""The suite's table: our numbers next to the paper's, as Markdown (people) and CSV (tools).

Every number says what it is: fine-tune and linear probe give the *best* test epoch (what the
overlay paper reports, which selects the epoch on the test set) and the *last* epoch (which does
not); kNN has no epochs. The row's data column and the caveats above the table say how our setting
differs from the paper's (dataset, resolution, encoder size, epochs).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .spec import Planned, Suite

COLUMNS = (
    "entry", "status", "recipe", "method", "data", "train_images", "test_images", "pretrain_epochs",
    "finetune_best_top1", "finetune_last_top1", "finetune_best_epoch", "linear_best_top1", "linear_last_top1",
    "knn_top1", "knn_head_top1", "paper_finetune_top1", "paper_linear_top1", "paper_knn_top1", "paper_setting",
    "pretrain_s", "eval_s", "note",
)
SCALE_WORDS = {
    "smoke": "smoke (plumbing check on a tiny subset: the numbers mean nothing)",
    "cpu": "cpu (a CIFAR subset sized for about an hour on 2 CPU cores: far from the papers' budgets)",
    "gpu": "gpu (full training set, epochs sized for one H100-class GPU: the suite's scale notes give the budget)",
}
ALWAYS = (
    "'best' = the best test-set epoch, as the overlay paper reports (it selects on the test set); "
    "'last' = the last epoch. kNN: weighted k-NN (k=200, T=0.1) on the frozen encoder features "
    "(the backbone's pooled features; 'kNN head': on the method's head embedding instead).",
    "The CIFAR-10 copy used here was stored as JPEG (quality 75) by its publisher: pixels differ slightly "
    "from the canonical CIFAR-10, and accuracies can come out a little lower.",
)


def _plain(name: Any) -> str:
    """'CIFAR-100' == 'cifar100'."""
    return "".join(c for c in str(name).lower() if c.isalnum())


def _method_label(cfg: dict[str, Any]) -> str:
    m = cfg["method"]
    extra = {k: m[k] for k in ("corruption", "alpha", "mask_ratio", "mode", "augment", "mix", "approach",
                                          "pairing", "same_view") if k in m}
    if m.get("corruption") != "overlay":
        extra.pop("alpha", None)
    if m.get("corruption") != "pixel_mask":
        extra.pop("mask_ratio", None)
    inner = ", ".join(f"{k}={v}" for k, v in extra.items())
    return f"{m['name']}[{cfg['backbone'].get('name', '?')}]" + (f"({inner})" if inner else "")


def result_row(p: Planned, outcome: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """One CSV/Markdown row for a planned entry and what running it produced so far."""
    evals = outcome.get("evals", {})
    ft = evals.get("finetune") or evals.get("monitor") or {}
    lin, knn, knn_head = evals.get("linear", {}), evals.get("knn", {}), evals.get("knn_head", {})
    counts = knn or knn_head  # the images a kNN evaluated
    d = p.cfg["data"]
    notes = list(p.notes)
    if p.paper_data and _plain(d["name"]) != _plain(p.paper_data):
        notes.append(f"ran on {d['name']}; the paper's numbers are on {p.paper_data}")
    if "monitor" in evals and "finetune" not in evals:
        notes.append("fine-tune columns: its own training from random weights (the paper's supervised baseline)")
    return {
        "entry": p.entry.name, "status": outcome.get("status", "pending"), "recipe": p.entry.recipe,
        "method": _method_label(p.cfg), "data": f"{d['name']}" + (f" at {d['image_size']} px" if d["image_size"] else ""),
        "train_images": counts.get("train_images", d["subset"] or "all"),
        "test_images": counts.get("test_images", d["test_subset"] or "all"),
        "pretrain_epochs": p.cfg["train"]["epochs"],
        "finetune_best_top1": ft.get("best_top1"), "finetune_last_top1": ft.get("last_top1"),
        "finetune_best_epoch": ft.get("best_epoch"),
        "linear_best_top1": lin.get("best_top1"), "linear_last_top1": lin.get("last_top1"),
        "knn_top1": knn.get("top1"), "knn_head_top1": knn_head.get("top1"),
        "paper_finetune_top1": p.entry.paper.get("finetune"), "paper_linear_top1": p.entry.paper.get("linear"),
        "paper_knn_top1": p.entry.paper.get("knn"),
        "paper_setting": p.entry.paper_setting,
        "pretrain_s": timings.get("pretrain_s"),
        "eval_s": round(sum(v for k, v in timings.items() if k != "pretrain_s"), 1) if timings else None,
        "note": "; ".join(notes),
    }


def _num(value: Any) -> str:
    return "–" if value is None or value == "" else f"{value:.1f}" if isinstance(value, float) else str(value)


def _paper(value: Any) -> str:
    return "–" if value is None or value == "" else str(value)  # 37.0, 34.08: as printed in the paper


def _pair(best: Any, last: Any) -> str:
    return "–" if best is None and last is None else f"{_num(best)} / {_num(last)}"


def always_shown(suite: Suite) -> set[str]:
    """Our columns for every evaluation slot some entry has (shown as '–' until the numbers exist)."""
    kinds = {k for e in suite.entries for k in e.evaluate}
    return ({"fine-tune best / last"} if kinds & {"finetune", "monitor"} else set()) | \
        ({"linear best / last"} if "linear" in kinds else set()) | ({"kNN"} if "knn" in kinds else set()) | \
        ({"kNN head"} if "knn_head" in kinds else set())


def to_markdown(suite: Suite, scale: str, rows: list[dict[str, Any]], figures: list[Path], out_dir: Path) -> str:
    lines = [f"# {suite.title}", ""]
    if suite.paper:
        lines += [f"Paper: {suite.paper}", ""]
    lines += [f"Scale: {SCALE_WORDS.get(scale, scale)}. Updated {time.strftime('%Y-%m-%d %H:%M:%S')}.", "",
              "Read before comparing:", ""]
    lines += [f"- {c}" for c in (*suite.caveats, *ALWAYS)]
    # protocol columns that no row uses (no number of ours, none of the paper's) are left out
    shown = [(label, fn) for label, fn, keys in (
        ("fine-tune best / last", lambda r: _pair(r["finetune_best_top1"], r["finetune_last_top1"]),
         ("finetune_best_top1", "finetune_last_top1")),
        ("linear best / last", lambda r: _pair(r["linear_best_top1"], r["linear_last_top1"]),
         ("linear_best_top1", "linear_last_top1")),
        ("kNN", lambda r: _num(r["knn_top1"]), ("knn_top1",)),
        ("kNN head", lambda r: _num(r["knn_head_top1"]), ("knn_head_top1",)),
        ("paper fine-tune", lambda r: _paper(r["paper_finetune_top1"]), ("paper_finetune_top1",)),
        ("paper linear", lambda r: _paper(r["paper_linear_top1"]), ("paper_linear_top1",)),
        ("paper kNN", lambda r: _paper(r["paper_knn_top1"]), ("paper_knn_top1",)),
    ) if any(r.get(k) not in (None, "") for r in rows for k in keys) or label in always_shown(suite)]
    header = ["entry", "method", "our data (train/test)", *(label for label, _ in shown), "paper setting",
              "time (pretrain + eval)", "note"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        status = "" if r["status"] == "done" else f" ({r['status']})"
        timing = "–" if r["pretrain_s"] is None else f"{_num(r['pretrain_s'])} + {_num(r['eval_s'])} s"
        cells = [f"{r['entry']}{status}", r["method"],
                 f"{r['data']} ({r['train_images']}/{r['test_images']}), {r['pretrain_epochs']} ep",
                 *(fn(r) for _, fn in shown), r["paper_setting"] or "–", timing, r["note"] or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += ["", "Top-1 accuracy in %. Each row's run directory (config, logs, checkpoints, eval_*.json) is "
              f"`{out_dir}/<entry>/`.", ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({f.relative_to(out_dir).as_posix()})" for f in figures]
        lines.append("")
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]], scale: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("scale", *COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"scale": scale, **{k: "" if r.get(k) is None else r[k] for k in COLUMNS}})
    return buf.getvalue()


def write_results(out_dir: Path, suite: Suite, scale: str, rows: list[dict[str, Any]],
                  figures: list[Path] | None = None) -> Path:
    """Write ``results.md`` and ``results.csv`` atomically; return the Markdown path."""
    out_dir = Path(out_dir)
    md = out_dir / "results.md"
    atomic_write_text(md, to_markdown(suite, scale, rows, list(figures or []), out_dir))
    atomic_write_text(out_dir / "results.csv", to_csv(rows, scale))
    return md
