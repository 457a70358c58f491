"""Weighted k-nearest-neighbour classification (Wu et al. 2018; the MoCo/InstDisc kNN monitor).

Cosine similarity, the top-k neighbours vote with weight ``exp(sim / T)``. The similarity matrix
is computed in query chunks, so 50,000 x 2,048 banks stay in bounded memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_scores(bank: Tensor, bank_labels: Tensor, query: Tensor, num_classes: int, k: int = 200,
               temperature: float = 0.1, chunk_size: int = 1024) -> Tensor:
    """Class scores (Q, num_classes) for each query."""
    bank = F.normalize(bank.float(), dim=1)
    query = F.normalize(query.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for i in range(0, query.shape[0], chunk_size):
        sim = query[i : i + chunk_size] @ bank.T  # (q, N): the only large temporary, q*N floats
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(top_idx.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        out.append(votes)
    return torch.cat(out)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    n = max(1, labels.shape[0])
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).sum().item() / n for k in ks}


def knn_accuracy(bank: Tensor, bank_labels: Tensor, query: Tensor, query_labels: Tensor, num_classes: int,
                 k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of weighted kNN."""
    scores = knn_scores(bank, bank_labels, query, num_classes, k, temperature, chunk_size)
    return topk_accuracy(scores, query_labels)
