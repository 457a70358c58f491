"""NT-Xent (SimCLR's normalised temperature-scaled cross entropy), distributed-correct.

Each of the 2N views has one positive (the other view of its image) and 2N-2 negatives; with
several processes the negatives come from the global batch (features are all-gathered with
gradients, and each rank computes the loss rows of its own samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import dist


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """Mean NT-Xent over the local 2B views, with negatives from every rank."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    b = z1.shape[0]
    all1, all2 = dist.gather_with_grad(z1), dist.gather_with_grad(z2)
    big_b = all1.shape[0]
    offset = dist.rank() * b
    keys = torch.cat([all1, all2])  # (2N, D): view-1 block, then view-2 block
    queries = torch.cat([z1, z2])  # (2b, D)
    logits = queries @ keys.T / temperature
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + big_b])
    pos_idx = torch.cat([local + big_b, local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")  # a view is not its own negative
    return F.cross_entropy(logits, pos_idx)
