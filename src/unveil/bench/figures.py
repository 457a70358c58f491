"""Figures of a suite: every entry's training loss in one PNG, and a reconstruction grid per AE entry."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..io import atomic_write  # noqa: E402
from ..runs.logs import STEP_LOG, read_csv  # noqa: E402
from .spec import Planned, pretrain_state  # noqa: E402

RECON_IMAGES = 8


def loss_curves(planned: list[Planned], path: Path) -> Path | None:
    """Loss against epoch, one panel per method (their losses are on different scales)."""
    curves: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for p in planned:
        rows = [r for r in read_csv(p.run_dir / STEP_LOG) if r.get("loss") is not None]
        if rows:
            x = [r.get("epoch") if r.get("epoch") is not None else r["step"] for r in rows]
            curves.setdefault(p.cfg["method"]["name"], []).append((p.entry.name, x, [r["loss"] for r in rows]))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.6 * len(curves), 3.8), squeeze=False, layout="constrained")
    for ax, (method, lines) in zip(axes[0], sorted(curves.items())):
        for name, x, y in lines:
            ax.plot(x, y, lw=1.2, marker="o" if len(x) < 4 else None, ms=3, label=name)
        ax.set(xlabel="epoch", ylabel="training loss", title=method)
        if all(v > 0 for _, _, y in lines for v in y):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    # the constrained layout already fits the page; bbox_inches="tight" drew the figure twice (0.83 s -> 0.6 s,
    # and the table redraws it after every entry)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def reconstruction(p: Planned, path: Path) -> Path | None:
    """Clean | corrupted | reconstructed test images of a finished autoencoder run (made once)."""
    from ..methods import METHODS
    from ..runs.checkpoint import load_run
    from ..viz.reconstruct import reconstruction_grid

    if path.is_file() or pretrain_state(p.run_dir) != "done":
        return path if path.is_file() else None
    # asked of the class, not of a loaded run: the table is rewritten after every entry, and loading every
    # finished run each time to learn that it does not reconstruct was half of a smoke suite's time
    if not METHODS.lookup(p.cfg["method"]["name"]).implements("reconstruct"):
        return None
    method, _, _ = load_run(p.run_dir, load_data=False)
    from ..build import load_dataset_for

    images = load_dataset_for(p.cfg).test.images  # the current data.root, which may have moved
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:RECON_IMAGES].sort().values
    reconstruction_grid(method, images[pick], torch.Generator().manual_seed(0), path)
    return path


def write_figures(planned: list[Planned], fig_dir: Path) -> list[Path]:
    made = [loss_curves(planned, fig_dir / "loss_curves.png")]
    made += [reconstruction(p, fig_dir / f"recon_{p.entry.name}.png") for p in planned]
    return [f for f in made if f is not None]
