"""Label-free scores of an encoder, for folders without labels: RankMe (Garrido et al., 2023), the effective
rank of the embeddings, and how far a label-free ranking of encoders agrees with a labelled one.

RankMe is ``exp(H(p))`` with ``p_k = σ_k / Σσ`` the normalised singular values of the ``(N, D)`` embedding
matrix: ``D`` when every direction carries the same variance, 1 when the embeddings collapse onto a line.
It needs no labels, so a user with a flat folder can rank encoders with it; ``kendall_tau`` measures how well
that ranking agreed with kNN where labels existed, which is how far to trust it elsewhere.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

EPS = 1e-7  # the paper's epsilon inside the entropy


@torch.no_grad()
def rankme(embeddings: Tensor, max_rows: int = 25600) -> float:
    """Effective rank of ``embeddings`` ``(N, D)``; at most ``max_rows`` rows (the paper uses 25,600)."""
    z = embeddings[:max_rows].double()
    if z.ndim != 2 or min(z.shape) == 0:
        raise ValueError(f"rankme needs a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(z)
    p = sigma / sigma.sum().clamp_min(EPS) + EPS
    return float(torch.exp(-(p * p.log()).sum()))


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Rank agreement of two scorings of the same items, in [-1, 1] (tau-b: ties count as neither)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"kendall_tau needs two scorings of the same >= 2 items, got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else 0.0
