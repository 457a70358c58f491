"""Tensor helpers shared by the views and the corruptions (and the methods built on them).

Both compute in a dtype they choose, with autocast off, and draw all randomness from a
``torch.Generator`` on the generator's own device (so a CUDA generator never waits for the host).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn autocast off on ``device``, so an op computes in the dtype it chose inside a bf16 region too."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move small parameter tensors; host -> accelerator copies are queued without waiting
    (device -> host ones must wait, or the host could read the buffer before it is filled)."""
    return t.to(device, non_blocking=torch.device(device).type != "cpu")


def rand(shape: Sequence[int], generator: torch.Generator, device: torch.device | None = None) -> Tensor:
    """Uniform [0, 1) float32 drawn on the generator's device (no host sync), then moved to
    ``device`` when one is given (else left on the generator's device)."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return u if device is None else to_device(u, device)
