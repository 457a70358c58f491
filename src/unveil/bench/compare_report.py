"""The report of ``unveil compare``: a Markdown table sorted by the headline score, each accuracy with its
standard error and beside its untrained encoder, the floors, how far the label-free score agreed with kNN,
and the figures (kNN bars with the floors as lines; score against pretraining wall-clock, with the kNN
monitor's points during training on labelled data; for unlabelled data, each encoder's nearest neighbours)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_text


def standard_error(top1: float, n: int) -> float:
    """Binomial standard error of an accuracy in % measured on ``n`` test images."""
    return 100.0 * math.sqrt(max(top1 / 100 * (1 - top1 / 100), 0.0) / max(n, 1))


def _acc(r: dict[str, Any], key: str) -> str:
    if r.get(key) is None:
        return "–"
    se = f" ± {standard_error(r[key], r['test_images']):.1f}" if key == "knn" else ""
    return f"{r[key]:.1f}{se} ({r[f'{key}_untrained']:.1f})"


def agreement(results: list[dict[str, Any]]) -> float | None:
    """Kendall's tau between the RankMe and the kNN ranking of the contenders (None without labels)."""
    from ..eval.rankme import kendall_tau

    scored = [r for r in results if r.get("knn") is not None]
    if len(scored) < 2:
        return None
    return kendall_tau([r["rankme"] for r in scored], [r["knn"] for r in scored])


def _stem_note(request: dict[str, Any]) -> str:
    stem = request.get("stem", "auto")
    return "" if stem == "auto" else f" except the ResNet stem: {stem} on every contender that has a choice (--stem)"


def to_markdown(request: dict[str, Any], results: list[dict[str, Any]], floors: dict[str, float],
                figures: list[Path], out: Path, cpu: str) -> str:
    labelled = any(r.get("knn") is not None for r in results)
    rows = sorted(results, key=lambda r: -(r["knn"] if labelled else r["rankme"]))
    budget = (f"{request['budget_s'] / 60:g} min of pretraining each" if request["budget_s"] is not None
              else f"{request['epochs']} epochs each")
    lines = [f"# unveil compare: {request['data']}", "",
             f"Every method on one budget ({budget}), the same data and seed {request['seed']}, the settings auto "
             f"picks for the data{_stem_note(request)}; {cpu}. Updated {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    if labelled:
        lines += [f"Sorted by kNN (weighted, k=200, T=0.1; ± its standard error on the "
                  f"{rows[0]['test_images']} test images). In brackets: the same method's untrained encoder, same "
                  "data and protocol. Linear: a linear probe on all labels, on 1 % and on 10 % of them "
                  "(stratified, seeded). RankMe: the label-free score (effective rank of the embeddings).", ""]
    else:
        lines += ["No labels: sorted by RankMe, the label-free score (effective rank of the embeddings; in "
                  "brackets the untrained encoder's). How far to trust it: see its agreement with kNN on "
                  "labelled data in docs/results.md.", ""]
    header = ["method", "recipe", "steps", "images seen", "pretrain min"]
    header += ["kNN", "linear", "linear 1 %", "linear 10 %"] if labelled else []
    lines += ["| " + " | ".join([*header, "RankMe"]) + " |", "|" + "---|" * (len(header) + 1)]
    for r in rows:
        cells = [r["name"], f"`{r['recipe']}`", str(r["plan"]["steps"]), str(r["images_seen"]),
                 f"{r['pretrain_s'] / 60:.1f}"]
        if labelled:
            cells += [_acc(r, "knn"), _acc(r, "linear"), _acc(r, "linear_1pct"), _acc(r, "linear_10pct")]
        cells.append(f"{r['rankme']:.1f} ({r['rankme_untrained']:.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if "raw_pixels" in floors:
        lines += [f"Floor: kNN on the raw pixels {floors['raw_pixels']:.1f} %.", ""]
    tau = agreement(results)
    if tau is not None:
        lines += [f"Label-free score against kNN: Kendall's tau {tau:+.2f} over {len(rows)} methods (1: RankMe "
                  "orders them exactly as kNN does, 0: no better than chance).", ""]
    lines += [f"![{f.stem}]({f.relative_to(out).as_posix()})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(out: Path, request: dict[str, Any], results: list[dict[str, Any]], floors: dict[str, float],
                 dataset: Any, failed: dict[str, str] | None = None) -> Path:
    from ..precision import machine_description, pick_device

    figures = _figures(out, results, floors, dataset)
    report = out / "report.md"
    text = to_markdown(request, results, floors, figures, out, machine_description(pick_device("auto")))
    text += "".join(f"\nFailed: {name}: {why}\n" for name, why in (failed or {}).items())
    atomic_write_text(report, text)
    return report


def _figures(out: Path, results: list[dict[str, Any]], floors: dict[str, float], dataset: Any) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz.curves import _save

    labelled = any(r.get("knn") is not None for r in results)
    key, name = ("knn", "kNN top-1 (%)") if labelled else ("rankme", "RankMe (effective rank)")
    paths = []
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(results), 3.6))
    ax.bar(range(len(results)), [r[key] for r in results], color="#08519c", label="pretrained")
    ax.scatter(range(len(results)), [r[f"{key}_untrained"] for r in results], color="#9ecae1", zorder=3,
               label="its untrained encoder")
    if "raw_pixels" in floors and labelled:
        ax.axhline(floors["raw_pixels"], color="0.4", ls="--", lw=1, label="raw pixels")
    ax.set_xticks(range(len(results)), [r["name"] for r in results], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=name, title="one budget, one split")
    ax.legend(fontsize=7)
    paths.append(out / "scores.png")
    _save(fig, paths[-1])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    curves = labelled and any(r.get("curve") for r in results)
    for r in results:  # untrained (hollow) at 0 s and pretrained (filled) at the wall-clock used: the final kNN
        line, = ax.plot([0, r["pretrain_s"] / 60], [r[f"{key}_untrained"], r[key]], ls="-" if not curves else "none",
                        marker="o", label=r["name"])
        ax.plot([0], [r[f"{key}_untrained"]], marker="o", mfc="white", color=line.get_color())
        curve = r.get("curve") or []
        if curve and labelled:  # the monitor during training: its own smaller bank and queries, so lower
            ax.plot([p["train_s"] / 60 for p in curve], [p["knn_top1"] for p in curve], ls="--", marker=".",
                    color=line.get_color(), alpha=0.7)
    ax.set(xlabel="pretraining wall-clock (min)", ylabel=name, title="score against time")
    if curves:
        ax.text(0.01, 0.01, "o: final kNN (all images), hollow: untrained; dashed: kNN monitor during training "
                "(a subset: compare shapes, not levels)", transform=ax.transAxes, fontsize=5.5, color="0.35")
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    paths.append(out / "score_vs_time.png")
    _save(fig, paths[-1])
    if not labelled:
        paths += _neighbours(out, results, dataset)
    return paths


def _neighbours(out: Path, results: list[dict[str, Any]], dataset: Any) -> list[Path]:
    """Each encoder's 8 nearest neighbours of the same 6 query images, in the pretraining images."""
    from ..eval.features import extract
    from ..precision import pick_device
    from ..runs.checkpoint import load_run
    from ..viz.neighbours import neighbour_grid

    device, paths = pick_device("auto"), []
    bank = dataset.train.images[:2048]
    queries = dataset.test.images[:6] if len(dataset.test.images) else bank[:6]
    for r in results:
        method, _, _ = load_run(out / r["name"], load_data=False)
        feats = extract(method.embed, bank, device)
        query_feats = extract(method.embed, queries, device)
        paths.append(neighbour_grid(queries, bank, query_feats, feats, out / f"neighbours_{r['name']}.png",
                                    title=f"{r['name']}: nearest neighbours"))
    return paths
