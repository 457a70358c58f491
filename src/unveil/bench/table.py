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
from ..protocols.base import Column, ordered
from .spec import Planned, Suite

LEADING = ("entry", "status", "recipe", "method", "data", "train_images", "test_images", "pretrain_epochs")
TRAILING = ("paper_setting", "pretrain_s", "eval_s", "note")


def result_columns() -> list[Column]:
    """Our columns, from the registered protocols (bench and CSV order: the protocols' ``order``)."""
    return [c for p in ordered() for c in p.columns]


def paper_columns() -> list[tuple[str, str, str]]:
    """(Markdown label, CSV column, key of an entry's ``paper``) for every protocol with a paper column."""
    return [(p.paper_label, f"paper_{p.name}_top1", p.name) for p in ordered() if p.paper_label]


def csv_columns() -> tuple[str, ...]:
    """Every CSV column, our protocols' and the paper's generated from the registry."""
    ours = [key for c in result_columns() for key, _ in c.fields]
    return (*LEADING, *ours, *(key for _, key, _ in paper_columns()), *TRAILING)


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


def _filled(evals: dict[str, Any], slot: str) -> tuple[dict[str, Any], str]:
    """The result that fills ``slot``'s columns: its own, else one of a protocol that ``fills`` it (the
    supervised row's monitor fills the fine-tune columns), with that protocol's note."""
    if slot in evals:
        return evals[slot], ""
    for p in ordered():
        if p.fills == slot and p.name in evals:
            return evals[p.name], p.fills_note
    return {}, ""


def result_row(p: Planned, outcome: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """One CSV/Markdown row for a planned entry and what running it produced so far."""
    evals = outcome.get("evals", {})
    d = p.cfg["data"]
    notes = list(p.notes)
    if p.paper_data and _plain(d["name"]) != _plain(p.paper_data):
        notes.append(f"ran on {d['name']}; the paper's numbers are on {p.paper_data}")
    ours: dict[str, Any] = {}
    for column in result_columns():
        result, note = _filled(evals, column.slot)
        ours.update({key: result.get(field) for key, field in column.fields})
        if note and result and note not in notes:
            notes.append(note)
    counts = next((r for r in evals.values() if "test_images" in r), {})  # the images an evaluation used
    return {
        "entry": p.entry.name, "status": outcome.get("status", "pending"), "recipe": p.entry.recipe,
        "method": _method_label(p.cfg), "data": f"{d['name']}" + (f" at {d['image_size']} px" if d["image_size"] else ""),
        "train_images": counts.get("train_images", d["subset"] or "all"),
        "test_images": counts.get("test_images", d["test_subset"] or "all"),
        "pretrain_epochs": p.cfg["train"]["epochs"], **ours,
        **{key: p.entry.paper.get(name) for _, key, name in paper_columns()},
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
    slots = {slot for e in suite.entries for slot in e.evaluate}
    slots |= {p.fills for p in ordered() if p.fills and p.name in slots}
    return {c.label for c in result_columns() if c.slot in slots}


def _shown_columns(suite: Suite, rows: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(label, cell) for each protocol column that some row fills or some entry evaluates, then the paper's
    columns that some entry has: a column nobody uses is left out."""
    def used(keys: list[str]) -> bool:
        return any(r.get(k) not in (None, "") for r in rows for k in keys)

    shown = []
    for c in result_columns():
        keys = [key for key, _ in c.fields[:c.shown]]
        if used(keys) or c.label in always_shown(suite):
            cell = (lambda r, k=keys: _pair(r[k[0]], r[k[1]])) if len(keys) == 2 else (lambda r, k=keys: _num(r[k[0]]))
            shown.append((c.label, cell))
    shown += [(label, lambda r, k=key: _paper(r[k])) for label, key, _ in paper_columns() if used([key])]
    return shown


def to_markdown(suite: Suite, scale: str, rows: list[dict[str, Any]], figures: list[Path], out_dir: Path) -> str:
    lines = [f"# {suite.title}", ""]
    if suite.paper:
        lines += [f"Paper: {suite.paper}", ""]
    lines += [f"Scale: {SCALE_WORDS.get(scale, scale)}. Updated {time.strftime('%Y-%m-%d %H:%M:%S')}.", "",
              "Read before comparing:", ""]
    lines += [f"- {c}" for c in (*suite.caveats, *ALWAYS)]
    shown = _shown_columns(suite, rows)
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
    columns = csv_columns()
    writer = csv.DictWriter(buf, fieldnames=("scale", *columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"scale": scale, **{k: "" if r.get(k) is None else r[k] for k in columns}})
    return buf.getvalue()


def write_results(out_dir: Path, suite: Suite, scale: str, rows: list[dict[str, Any]],
                  figures: list[Path] | None = None) -> Path:
    """Write ``results.md`` and ``results.csv`` atomically; return the Markdown path."""
    out_dir = Path(out_dir)
    md = out_dir / "results.md"
    atomic_write_text(md, to_markdown(suite, scale, rows, list(figures or []), out_dir))
    atomic_write_text(out_dir / "results.csv", to_csv(rows, scale))
    return md
