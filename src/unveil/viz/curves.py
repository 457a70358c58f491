"""Figures a person looks at after a run: loss and monitor curves, sample views."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ..io import atomic_write  # noqa: E402
from ..runs.logs import EPOCH_LOG, STEP_LOG, read_csv  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(run_dir: str | Path, path: str | Path) -> Path:
    """Training loss per step and the per-epoch monitor metric(s), side by side."""
    run_dir, path = Path(run_dir), Path(path)
    steps, epochs = read_csv(run_dir / STEP_LOG), read_csv(run_dir / EPOCH_LOG)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        a.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    a.set(xlabel="step", ylabel="training loss", title="loss")
    metric_keys = [k for k in (epochs[0] if epochs else {}) if k.endswith("top1")]
    for key in metric_keys:
        b.plot([r["epoch"] for r in epochs], [r[key] for r in epochs], marker="o", label=key)
    b.set(xlabel="epoch", ylabel="accuracy (%)", title="monitor")
    if metric_keys:
        b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save(fig, path)
    return path


def _to_display(x: Tensor, mean: tuple, std: tuple, normalized: bool) -> Tensor:
    x = x.float().cpu()
    if normalized:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return x.clamp(0, 1)


def plot_views(images: Tensor, views: list[Tensor], path: str | Path, mean: tuple, std: tuple,
               normalized: bool = True, titles: list[str] | None = None) -> Path:
    """Rows: the original images, then each view batch (e.g. SimCLR's two augmented views)."""
    rows = [images.float().div(255) if images.dtype == torch.uint8 else images.float()]
    rows += [_to_display(v, mean, std, normalized) for v in views]
    titles = titles or ["original"] + [f"view {i + 1}" for i in range(len(views))]
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for r, batch in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(batch[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=8)
    _save(fig, Path(path))
    return Path(path)
