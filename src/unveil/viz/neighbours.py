"""Nearest-neighbour image grids: how a person without labels checks that an encoder learned.

Each row is a query image followed by its nearest training images under the encoder's features
(cosine similarity). An untrained encoder returns neighbours that share colour and brightness; a
trained one returns neighbours that share content.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .grid import labelled_grid, save_png, to_display


@torch.no_grad()
def nearest(query_feats: Tensor, bank_feats: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(similarities, indices) of the ``k`` most cosine-similar bank rows for each query row."""
    sim = F.normalize(query_feats.float(), dim=1) @ F.normalize(bank_feats.float(), dim=1).T
    return sim.topk(min(k, bank_feats.shape[0]), dim=1)


def neighbour_grid(queries: Tensor, bank: Tensor, query_feats: Tensor, bank_feats: Tensor, path: str | Path,
                   k: int = 8, title: str = "") -> Path:
    """Write the grid for uint8 ``queries`` (Q, 3, H, W) against uint8 ``bank`` images to ``path``."""
    sims, idx = nearest(query_feats, bank_feats, k)
    rows = []
    for i in range(queries.shape[0]):
        tiles = torch.cat([to_display(queries[i : i + 1]), to_display(bank[idx[i]])])
        rows.append((f"query {i + 1}\nthen its {idx.shape[1]}\nnearest\ncos {sims[i, 0]:.2f} to\n{sims[i, -1]:.2f}", tiles))
    cell = max(64, min(128, queries.shape[-1] * 2))
    save_png(labelled_grid(rows, title=title, cell=cell, label_width=110), path)
    return Path(path)
