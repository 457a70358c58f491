"""BYOL's regression loss: normalised MSE between the online prediction and the target projection."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean of ``2 − 2·cos(p, z)`` over the batch (``target`` is treated as a constant)."""
    p, z = F.normalize(prediction.float(), dim=1), F.normalize(target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()
