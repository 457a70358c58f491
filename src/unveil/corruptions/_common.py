"""Shared checks and generator-seeded samplers for the corruptions.

Every corruption draws all its randomness from the ``torch.Generator`` it is given, on the batch's
device, so the same generator state gives the same output and no global RNG is touched. Random
numbers are drawn in float32 whatever the batch dtype, so a bf16 batch gets the same masks, boxes
and partners as a float32 batch from the same seed.
The uniform sampler ``rand`` and ``no_autocast`` are shared with the views, in ``unveil.tensors``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

import torch
from torch import Tensor

from ..errors import UserError
from ..tensors import rand


class CorruptionError(UserError, ValueError):
    """A bad corruption parameter: a `UserError` for the CLI and a `ValueError` for Python callers."""


def fail(message: str) -> NoReturn:
    raise CorruptionError(message)


def check_batch(x: Tensor, name: str, *, floating: bool = True) -> None:
    """A batch must be a 4-D tensor (B, C, H, W), floating point unless ``floating`` is False."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        fail(f"{name}: expected a batch of images (B, C, H, W), got {shape}")
    if floating and not x.is_floating_point():
        fail(f"{name}: expected a floating-point batch (e.g. images in [0, 1]), got dtype {x.dtype}")


def check_generator(generator: object, device: torch.device, name: str) -> torch.Generator:
    """The generator must be a `torch.Generator` living on ``device`` (random tensors are drawn there)."""
    if not isinstance(generator, torch.Generator):
        fail(
            f"{name}: generator must be a torch.Generator on {device} (got {type(generator).__name__}); "
            f"create one with torch.Generator(device='{device.type}').manual_seed(seed)"
        )
    gdev = generator.device
    if gdev.type != device.type or (gdev.index or 0) != (device.index or 0):
        fail(
            f"{name}: generator is on {gdev} but the batch is on {device}; "
            f"create the generator with torch.Generator(device='{device}')"
        )
    return generator


def check_fraction(value: object, name: str, *, low: float = 0.0, high: float = 1.0, high_open: bool = False) -> float:
    """A number in [low, high] (or [low, high) when ``high_open``), returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        fail(f"{name} must be a number in [{low}, {high}{')' if high_open else ']'}, got {value!r}")
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        fail(f"{name} must lie in [{low}, {high}{')' if high_open else ']'}, got {value}")
    return float(value)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        fail(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sample_gamma(concentration: float, shape: Sequence[int], generator: torch.Generator, proposals: int = 16) -> Tensor:
    """Gamma(concentration, 1) samples drawn from ``generator`` (float32, generator's device).

    ``torch.distributions`` cannot take a generator, so this is Marsaglia & Tsang's method,
    vectorised: ``proposals`` candidates per sample, the first accepted one wins (acceptance is
    >= 95 % per candidate, so all 16 fail with probability < 1e-20; then the last is used).
    Concentrations below 1 use the boost Gamma(a) = Gamma(a + 1) * U^(1/a). No host sync.
    """
    a = float(concentration)
    if not a > 0:
        fail(f"gamma/beta concentration must be > 0, got {concentration}")
    shape = tuple(shape)
    a_eff = a + 1.0 if a < 1.0 else a
    d = a_eff - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(shape + (proposals,), generator=generator, device=generator.device)
    u = rand(shape + (proposals,), generator)
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp_min(1e-30))
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    accept[..., -1] = True  # fallback, reached with negligible probability
    first = accept.to(torch.uint8).argmax(dim=-1, keepdim=True)  # index of the first accepted candidate
    g = (d * v.gather(-1, first).squeeze(-1)).clamp_min(torch.finfo(torch.float32).tiny)
    if a < 1.0:
        g = g * rand(shape, generator).pow(1.0 / a)
    return g


def sample_beta(a: float, b: float, shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Beta(a, b) samples from ``generator`` (float32, generator's device), without a host sync.

    Beta(1, 1) is exactly U(0, 1); otherwise X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).
    """
    if a == 1.0 and b == 1.0:
        return rand(shape, generator)
    x = sample_gamma(a, shape, generator)
    y = sample_gamma(b, shape, generator)
    total = x + y
    return torch.where(total > 0, x / total, torch.full_like(total, 0.5))


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for reduced-precision batches (accurate sums/differences), else the batch dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
