"""Helpers shared by the view ops: float32 maths, seeded uniforms, per-sample broadcasting."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn autocast off on ``device``: views are computed in float32 whatever the caller's region."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


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


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move small parameter tensors; host -> accelerator copies are queued without waiting
    (device -> host ones must wait, or the host could read the buffer before it is filled)."""
    return t.to(device, non_blocking=torch.device(device).type != "cpu")


def rand(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device (no host sync), then moved to ``device``."""
    return to_device(torch.rand(shape, generator=generator, device=generator.device), device)


def col(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting per-sample parameters over images."""
    return v.view(-1, 1, 1, 1)
