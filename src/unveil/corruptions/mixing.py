"""Image mixtures (Un-Mix and MixDet, docs/design.md 5.2-5.4): CutMix boxes and within-batch mixing.

One box per batch (as the official code), held as a (4,) long tensor ``(y1, y2, x1, x2)`` on the
generator's device: rows y1:y2, columns x1:x2. Pasting uses a broadcast box mask and
``torch.where``, so nothing here syncs with the host (except ``unmix``'s global/region coin, whose
outcome is returned as a string). ``lam ~ Beta(beta, beta)`` is drawn from the generator:
Beta(1, 1) is U(0, 1); other betas use a Gamma ratio (``_common.sample_beta``), because
``torch.distributions`` cannot take a generator. All lams returned are float32 0-d tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..tensors import rand
from ._common import check_batch, check_generator, fail, sample_beta
from .registry import Corruption, register_corruption


class BoxResult(NamedTuple):
    box: Tensor  # (4,) long: y1, y2, x1, x2
    lam: Tensor  # 0-d float32: 1 − box area / (H·W), the share of the image left outside the box


class UnmixResult(NamedTuple):
    images: Tensor  # (B, C, H, W): image i mixed with image B−1−i
    lam: Tensor  # 0-d float32: weight of the image itself (area-corrected for a region mix)
    kind: str  # "global" (mixup) or "region" (CutMix)
    box: Tensor | None  # the box for a region mix, else None


class BranchMixResult(NamedTuple):
    x1: Tensor  # view 1 with the box region taken from view 2 (x1M)
    x2: Tensor  # view 2 with the box region taken from view 1 (x2M)
    box: Tensor  # the shared box
    lam: Tensor  # 1 − box area / (H·W)


class WithinBatchMixResult(NamedTuple):
    mixed1: Tensor  # x1 with box1 pasted from flip(x1, 0)
    mixed2: Tensor  # x2 with box2 pasted from flip(x2, 0)
    box1: Tensor
    box2: Tensor  # same cut size as box1, independent centre (both clipped to the image)
    lam1: Tensor  # 1 − |box1| / (H·W), the loss weight


def _check_beta(beta: object) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        fail(f"beta (of the Beta(beta, beta) mixing ratio) must be a number > 0, got {beta!r}")
    return float(beta)


def sample_lam(beta: float, generator: torch.Generator) -> Tensor:
    """lam ~ Beta(beta, beta), a 0-d float32 tensor on the generator's device."""
    b = _check_beta(beta)
    return sample_beta(b, b, (), generator)


def cutmix_box(
    height: int, width: int, lam: float | Tensor, generator: torch.Generator, nonempty: bool = False
) -> BoxResult:
    """Un-Mix's ``rand_bbox``: cut side ``int(S·√(1 − lam))``, centre uniform over the pixels,
    corners clipped to the image; ``nonempty`` adds one pixel to an empty side (mix-ssl's guard).
    Returns the box and the area-corrected lam = 1 − box area / (H·W).
    """
    dev = generator.device
    # float64 so int(S·√(1 − lam)) matches Un-Mix's Python arithmetic exactly (float32 rounds
    # e.g. 10·√0.09 up to 3.0 where Python gives 2.9999…)
    lam_t = lam.to(dev, torch.float64) if isinstance(lam, Tensor) else torch.tensor(float(lam), dtype=torch.float64, device=dev)
    if not isinstance(lam, Tensor) and not 0.0 <= float(lam) <= 1.0:
        fail(f"lam must lie in [0, 1], got {lam}")
    cut_rat = torch.sqrt((1.0 - lam_t).clamp(0.0, 1.0))
    size = torch.tensor([height, width], dtype=torch.float64, device=dev)
    half = (size * cut_rat).floor().long() // 2  # int(S·cut_rat) // 2, per axis
    centre = (rand((2,), generator) * size).floor().long().minimum(size.long() - 1)
    lo = (centre - half).clamp(min=0).minimum(size.long())
    hi = (centre + half).clamp(min=0).minimum(size.long())
    if nonempty:
        hi = torch.where(hi == lo, hi + 1, hi)
    box = torch.stack([lo[0], hi[0], lo[1], hi[1]])
    area = ((hi - lo).prod()).float()
    return BoxResult(box, (1.0 - area / float(height * width)).float())


def box_masks(box: Tensor | tuple[int, int, int, int], height: int, width: int, device=None) -> tuple[Tensor, Tensor]:
    """Bool masks (1, 1, H, W) of the pixels inside and outside ``box`` (for local/global pooling)."""
    b = torch.as_tensor(box, device=device if device is not None else (box.device if isinstance(box, Tensor) else None))
    rows = torch.arange(height, device=b.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=b.device).view(1, 1, 1, width)
    inside = (rows >= b[0]) & (rows < b[1]) & (cols >= b[2]) & (cols < b[3])
    return inside, ~inside


def paste(base: Tensor, source: Tensor, box: Tensor) -> Tensor:
    """``base`` with the ``box`` region replaced by ``source``'s (a new tensor)."""
    inside, _ = box_masks(box, base.shape[-2], base.shape[-1])
    return torch.where(inside.to(base.device), source, base)


def _check_pair(x1: Tensor, x2: Tensor, generator: torch.Generator, name: str) -> None:
    check_batch(x1, f"{name} x1")
    check_batch(x2, f"{name} x2")
    if x1.shape != x2.shape:
        fail(f"{name}: the two views must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    check_generator(generator, x1.device, name)


def unmix(x: Tensor, generator: torch.Generator, prob: float = 0.5, beta: float = 1.0) -> UnmixResult:
    """Un-Mix self-mixing with the reversed batch ``flip(x, 0)``: with probability ``prob`` a
    global mixup ``lam·x + (1 − lam)·flip(x)``, else a CutMix region pasted from ``flip(x)`` with
    lam corrected to the box area. One coin, lam and box for the whole batch (as the code).
    """
    check_batch(x, "unmix")
    check_generator(generator, x.device, "unmix")
    _check_prob(prob)
    coin = rand((), generator)
    lam = sample_lam(beta, generator)
    reverse = x.flip(0)
    if coin.item() < prob:  # the one host sync: the kind decides what is returned
        return UnmixResult(torch.lerp(reverse, x, lam.to(x.dtype)), lam, "global", None)
    box, lam = cutmix_box(x.shape[-2], x.shape[-1], lam, generator)
    return UnmixResult(paste(x, reverse, box), lam, "region", box)


def mix_between_branches(
    x1: Tensor, x2: Tensor, generator: torch.Generator, beta: float = 1.0, nonempty: bool = True
) -> BranchMixResult:
    """MixDet Approach 1: one box, same place in both views; view 2's region goes into view 1
    and vice versa, so each mixture holds only image i's content."""
    _check_pair(x1, x2, generator, "mix_between_branches")
    box, lam = cutmix_box(x1.shape[-2], x1.shape[-1], sample_lam(beta, generator), generator, nonempty)
    return BranchMixResult(paste(x1, x2, box), paste(x2, x1, box), box, lam)


def mix_within_batch(
    x1: Tensor, x2: Tensor, generator: torch.Generator, beta: float = 1.0, nonempty: bool = True
) -> WithinBatchMixResult:
    """MixDet Approach 2 (official code): each view gets a box pasted from its reversed batch;
    both boxes have the same cut size (one lam) and independent centres, clipped separately."""
    _check_pair(x1, x2, generator, "mix_within_batch")
    h, w = x1.shape[-2:]
    lam = sample_lam(beta, generator)
    box1, lam1 = cutmix_box(h, w, lam, generator, nonempty)
    box2, _ = cutmix_box(h, w, lam, generator, nonempty)
    return WithinBatchMixResult(paste(x1, x1.flip(0), box1), paste(x2, x2.flip(0), box2), box1, box2, lam1)


def _check_prob(prob: object) -> None:
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        fail(f"prob (of a global rather than region mix) must lie in [0, 1], got {prob!r}")


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        fail(f"{name} must be true or false, got {value!r}")


@register_corruption("unmix")
@dataclass(frozen=True)
class Unmix(Corruption):
    """Un-Mix: mix each image with the reversed batch, globally (mixup) or by a CutMix region."""

    prob: float = 0.5
    beta: float = 1.0

    def __post_init__(self) -> None:
        _check_prob(self.prob)
        _check_beta(self.beta)

    def __call__(self, x: Tensor, generator: torch.Generator) -> UnmixResult:
        return unmix(x, generator, self.prob, self.beta)


@dataclass(frozen=True)
class _TwoViewBoxMix(Corruption):
    """Shared parameters of the MixDet box mixes: lam ~ Beta(beta, beta), optional non-empty box."""

    two_views = True
    beta: float = 1.0
    nonempty: bool = True

    def __post_init__(self) -> None:
        _check_beta(self.beta)
        _check_flag(self.nonempty, "nonempty")


@register_corruption("mix_between_branches")
@dataclass(frozen=True)
class MixBetweenBranches(_TwoViewBoxMix):
    """MixDet Approach 1: swap one shared box region between the two views of each image."""

    def __call__(self, x1: Tensor, x2: Tensor, generator: torch.Generator) -> BranchMixResult:
        return mix_between_branches(x1, x2, generator, self.beta, self.nonempty)


@register_corruption("mix_within_batch")
@dataclass(frozen=True)
class MixWithinBatch(_TwoViewBoxMix):
    """MixDet Approach 2: paste a box from the reversed batch into each view (independent places)."""

    def __call__(self, x1: Tensor, x2: Tensor, generator: torch.Generator) -> WithinBatchMixResult:
        return mix_within_batch(x1, x2, generator, self.beta, self.nonempty)
