"""Random pixel mask (OverlayAE baseline, docs/design.md 1.2): zero m % of the pixels.

"Pixels" are spatial locations: one Bernoulli(ratio) draw per location, shared by all channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..tensors import rand
from ._common import check_batch, check_fraction, check_generator, fail
from .registry import Corruption, register_corruption


class PixelMaskResult(NamedTuple):
    images: Tensor  # (B, C, H, W), the input dtype
    mask: Tensor  # (B, 1, H, W) bool, True = masked


def random_pixel_mask(x: Tensor, ratio: float, generator: torch.Generator, fill: float = 0.0) -> PixelMaskResult:
    """Set each spatial location (all channels) to ``fill`` with probability ``ratio``.

    ``ratio`` is a fraction (0.02 for the paper's m = 2 %). ratio 0 is the identity.
    """
    check_batch(x, "random_pixel_mask")
    check_generator(generator, x.device, "random_pixel_mask")
    check_fraction(ratio, "ratio (fraction of masked pixels, e.g. 0.02 for 2 %)")
    _check_fill(fill)
    b, _, h, w = x.shape
    mask = rand((b, 1, h, w), generator) < ratio  # U[0, 1) < 0 never, < 1 always
    return PixelMaskResult(x.masked_fill(mask, fill), mask)


def _check_fill(fill: object) -> None:
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        fail(f"fill must be a number (the value of masked pixels), got {fill!r}")


@register_corruption("pixel_mask")
@dataclass(frozen=True)
class RandomPixelMask(Corruption):
    """Random pixel mask (OverlayAE baseline): each location masked with probability ratio."""

    ratio: float = 0.02
    fill: float = 0.0

    def __post_init__(self) -> None:
        check_fraction(self.ratio, "ratio (fraction of masked pixels, e.g. 0.02 for 2 %)")
        _check_fill(self.fill)

    def __call__(self, x: Tensor, generator: torch.Generator) -> PixelMaskResult:
        return random_pixel_mask(x, self.ratio, generator, self.fill)
