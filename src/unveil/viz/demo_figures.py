"""The demo's two figures: does pretraining beat its baselines, and how fast does it get there.

A kNN number alone says little; these put it beside the raw-pixel and untrained-encoder numbers
measured with the same bank, queries, k and T, so a reader sees the gap (or its absence).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .curves import _save  # noqa: E402


def plot_knn_bars(raw_pixels: float, methods: dict[str, dict[str, float]], path: str | Path,
                  chance: float | None = None, ylabel: str = "weighted kNN top-1 (%)") -> Path:
    """Bars: raw pixels, then per method its untrained and pretrained encoder (``{"untrained": x, "pretrained": y}``)."""
    labels, values, colours = ["raw pixels"], [raw_pixels], ["0.6"]
    for name, res in methods.items():
        labels += [f"{name}\nuntrained", f"{name}\npretrained"]
        values += [res["untrained"], res["pretrained"]]
        colours += ["#9ecae1", "#08519c"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.6))
    bars = ax.bar(range(len(values)), values, color=colours)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.5, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    if chance is not None:
        ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance ({chance:g} %)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set(ylabel=ylabel, ylim=(0, max(values) * 1.15 + 1), title="same bank, queries, k and T for every bar")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, Path(path))
    return Path(path)


def plot_knn_vs_epoch(histories: dict[str, list[tuple[float, float]]], untrained: dict[str, float],
                      raw_pixels: float, path: str | Path) -> Path:
    """kNN top-1 per epoch for each method (points ``(epoch, top1)``), with the untrained level
    of each method and the raw-pixel level as horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, points) in enumerate(histories.items()):
        c = colours[i % len(colours)]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=c, label=f"{name} (pretraining)")
        if name in untrained:
            ax.axhline(untrained[name], color=c, ls="--", lw=1, label=f"{name} untrained: {untrained[name]:.1f} %")
    ax.axhline(raw_pixels, color="0.4", ls=":", lw=1.5, label=f"raw pixels: {raw_pixels:.1f} %")
    ax.set(xlabel="epoch", ylabel="weighted kNN top-1 (%)", title="kNN during pretraining vs the baselines")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, Path(path))
    return Path(path)
