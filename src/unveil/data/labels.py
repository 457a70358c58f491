"""Low-shot label subsets: the labelled images a probe or a fine-tune may use, as a share of the training split
(``1%``, ``10%``) or a count per class (``5``), drawn per class and seeded, so that a low-shot score is
reproducible, names what it saw, and never misses a class (the masked siamese paper's semi-supervised
column trains on 1 % and 10 % of ImageNet's labels)."""

from __future__ import annotations

import re

import numpy as np
import torch

from ..errors import UserError

LABELS_HELP = ("train on a stratified, seeded share of the training labels: 1%%, 10%% (at least one image per "
               "class) or N (N images per class); default: all")


def parse_labels(spec: str | int | None) -> tuple[str, float] | None:
    """``"1%"`` -> ("share", 0.01); ``"5"`` or 5 -> ("per_class", 5); None or ``"all"`` -> None (every label)."""
    if spec is None or spec == "all":
        return None
    text = str(spec).strip()
    share = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
    if share and 0 < float(share.group(1)) <= 100:
        return "share", float(share.group(1)) / 100
    if re.fullmatch(r"\d+", text) and int(text) > 0 and not isinstance(spec, bool):
        return "per_class", int(text)
    raise UserError(f"labels must be a share of the training labels like 1% or 10% (0 to 100 %), a count per class "
                    f"like 5, or all; got {spec!r}")


def pick_labelled(labels: torch.Tensor | np.ndarray, spec: str | int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of the labelled subset ``spec`` of ``labels`` (all of them for None).

    ``share``: ``round(share · n_c)`` images of each class of size ``n_c``, at least one; ``per_class``:
    ``min(N, n_c)``. Within a class the images are a seeded random draw, so ``seed`` names the subset."""
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    parsed = parse_labels(spec)
    if parsed is None:
        return np.arange(len(y))
    kind, amount = parsed
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for cls in np.unique(y[y >= 0]):
        members = np.flatnonzero(y == cls)
        take = max(1, round(amount * len(members))) if kind == "share" else min(int(amount), len(members))
        picked.append(members[torch.randperm(len(members), generator=gen)[:take].numpy()])
    if not picked:
        raise UserError("labels: the training split has no labelled images to draw from")
    return np.sort(np.concatenate(picked))


def labels_suffix(spec: str | int | None) -> str:
    """How a low-shot result is named beside the full one: ``_1pct``, ``_10pct``, ``_5perclass``; ``""`` for all."""
    parsed = parse_labels(spec)
    if parsed is None:
        return ""
    kind, amount = parsed
    return f"_{amount * 100:g}pct".replace(".", "p") if kind == "share" else f"_{int(amount)}perclass"
