"""Feature extraction in batches, under the run's precision, returned as float32 on the CPU."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..precision import autocast


@torch.no_grad()
def extract(embed: Callable[[Tensor], Tensor], images: Tensor, device: torch.device, precision: str = "fp32",
            batch_size: int = 512) -> Tensor:
    """Apply ``embed`` to uint8 ``images`` in chunks; features stay bounded in memory (float32, CPU)."""
    chunks = []
    for i in range(0, len(images), batch_size):
        with autocast(device, precision):
            feats = embed(images[i : i + batch_size].to(device, non_blocking=True))
        chunks.append(feats.float().flatten(1).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)
