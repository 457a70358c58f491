"""Helpers of the view ops: float32 copies, per-sample broadcasting (seeded uniforms and autocast
switching are shared with the corruptions, in ``unveil.tensors``)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> a new float32 [0, 1] tensor, as torchvision's ``to_dtype(scale=True)``;
    float input is only cast to float32 (and may be returned as is)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    return images.float()


def owned(x: Tensor, inplace: bool) -> Tensor:
    """A float32 tensor the op may write into: ``x`` itself when ``inplace`` (and already a dense
    float32 tensor), else a copy. Pure ops copy once and then work in place, because on CPU every
    fresh image-sized tensor costs page faults that cost more than the arithmetic."""
    if x.dtype != torch.float32:
        return x.float()
    if inplace and x.stride(1) != 0:
        return x
    return x.clone()


def col(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting per-sample parameters over images."""
    return v.view(-1, 1, 1, 1)
