"""Paired image overlay (OverlayAE, docs/design.md 1.2): blend each image with a partner from the batch.

``x̂_i = a·x_j + (1 − a)·x_i`` with a < 0.5, so the image x_i still dominates; the target of the
autoencoder is the clean x_i. a = 0 is the identity (a plain autoencoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..tensors import rand
from ._common import check_batch, check_choice, check_generator, fail
from .registry import Corruption, register_corruption

PARTNER_MODES = ("perm", "derangement", "with_replacement")


class OverlayResult(NamedTuple):
    images: Tensor  # (B, C, H, W), the input dtype
    partner: Tensor  # (B,) long: image i was blended with image partner[i]
    alpha: Tensor  # (B,) float32: the weight of the partner


def check_alpha(alpha: object) -> tuple[float, float]:
    """alpha as a (lo, hi) range; a fixed alpha is (a, a). Every value must lie in [0, 0.5)."""
    if isinstance(alpha, (list, tuple)):
        if len(alpha) != 2:
            fail(f"alpha range must be [lo, hi], got {alpha!r}")
        lo, hi = alpha
    else:
        lo = hi = alpha
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 0.5:
            fail(
                f"alpha must lie in [0, 0.5) so that the image itself dominates the overlay, got {alpha!r} "
                "(0 = no overlay; the paper's best is 0.3)"
            )
    if lo > hi:
        fail(f"alpha range [lo, hi] needs lo <= hi, got {alpha!r}")
    return float(lo), float(hi)


def sample_partners(batch: int, mode: str, generator: torch.Generator) -> Tensor:
    """Partner index per image, on the generator's device.

    ``perm``: a random permutation (fixed points possible, then x̂_i = x_i);
    ``derangement``: the batch rolled by a random nonzero shift, so j != i whenever B > 1;
    ``with_replacement``: independent uniform draws.
    """
    check_choice(mode, "partner", PARTNER_MODES)
    device = generator.device
    if mode == "perm":
        return torch.randperm(batch, generator=generator, device=device)
    if mode == "with_replacement":
        return torch.randint(0, max(batch, 1), (batch,), generator=generator, device=device)
    if batch <= 1:
        return torch.zeros(batch, dtype=torch.long, device=device)
    shift = torch.randint(1, batch, (1,), generator=generator, device=device)
    return (torch.arange(batch, device=device) + shift) % batch


def paired_overlay(
    x: Tensor, alpha: float | tuple[float, float], generator: torch.Generator, partner: str = "perm"
) -> OverlayResult:
    """Overlay every image with a partner from the same batch (one fused lerp, no loop).

    ``alpha`` is fixed, or a (lo, hi) range sampled uniformly per image from [lo, hi).
    """
    check_batch(x, "paired_overlay")
    check_generator(generator, x.device, "paired_overlay")
    lo, hi = check_alpha(alpha)
    check_choice(partner, "partner", PARTNER_MODES)
    b = x.shape[0]
    partners = sample_partners(b, partner, generator)
    if lo == hi:
        weights = torch.full((b,), lo, dtype=torch.float32, device=x.device)
    else:
        weights = lo + (hi - lo) * rand((b,), generator)
    # lerp(x_i, x_j, a) = x_i + a·(x_j − x_i) = a·x_j + (1 − a)·x_i; exactly x_i when a = 0.
    images = torch.lerp(x, x.index_select(0, partners), weights.to(x.dtype).view(-1, 1, 1, 1))
    return OverlayResult(images, partners, weights)


@register_corruption("overlay")
@dataclass(frozen=True)
class PairedOverlay(Corruption):
    """Paired image overlay (OverlayAE): x̂_i = alpha·x_j + (1 − alpha)·x_i, alpha in [0, 0.5)."""

    alpha: float | tuple[float, float] = 0.3
    partner: str = "perm"

    def __post_init__(self) -> None:
        if isinstance(self.alpha, list):
            object.__setattr__(self, "alpha", tuple(self.alpha))
        check_alpha(self.alpha)
        check_choice(self.partner, "partner", PARTNER_MODES)

    def __call__(self, x: Tensor, generator: torch.Generator) -> OverlayResult:
        return paired_overlay(x, self.alpha, generator, self.partner)
