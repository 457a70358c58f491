"""Mixup and CutMix with soft targets, for supervised fine-tuning (timm's ``Mixup``, batch mode).

One coin, one lam and one box per batch; image i is mixed with image B−1−i (``flip(x, 0)``), and
its target is ``lam·onehot(y_i) + (1 − lam)·onehot(y_{B−1−i})`` after label smoothing (as timm).
With both mixup and CutMix on, CutMix is picked with ``switch_prob``; the batch is mixed at all
with ``mix_prob``; CutMix's lam is corrected to the pasted area (timm's ``correct_lam``).

Every random number comes from the ``generator`` (exact resume needs that: no numpy or global
RNG), and the same numbers are drawn whatever the coins say, so the stream never depends on an
outcome. Both candidates are computed and one is selected with ``torch.where``: no host sync.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..tensors import rand
from ._common import check_batch, check_generator, fail
from .mixing import cutmix_box, paste, sample_lam


class LabelMixResult(NamedTuple):
    images: Tensor  # (B, C, H, W) mixed images (the input itself when nothing is mixed)
    targets: Tensor  # (B, K) float32 soft targets, rows sum to 1
    lam: Tensor  # 0-d float32: weight of each image's own label (1 when the batch is not mixed)


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """One-hot targets with label smoothing: ``1 − s + s/K`` on the label, ``s/K`` elsewhere
    (what ``F.cross_entropy(label_smoothing=s)`` uses)."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def check_mix_settings(mixup: float, cutmix: float, mix_prob: float, switch_prob: float,
                       label_smoothing: float) -> None:
    """One clear line for a bad setting (alphas >= 0, probabilities and smoothing in [0, 1])."""
    for name, value in (("mixup", mixup), ("cutmix", cutmix)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            fail(f"{name} (the Beta(alpha, alpha) mixing ratio's alpha; 0 = off) must be a number >= 0, got {value!r}")
    for name, value in (("mix_prob", mix_prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            fail(f"{name} must be a number in [0, 1], got {value!r}")


def mix_batch(images: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator, mixup: float = 0.0,
              cutmix: float = 0.0, mix_prob: float = 1.0, switch_prob: float = 0.5,
              label_smoothing: float = 0.0) -> LabelMixResult:
    """Mixup (alpha ``mixup``) and/or CutMix (alpha ``cutmix``) of a batch with its reversed self.

    Both alphas 0: the images unchanged, smoothed one-hot targets, lam 1 (no random numbers drawn)."""
    check_batch(images, "mix_batch")
    check_mix_settings(mixup, cutmix, mix_prob, switch_prob, label_smoothing)
    if labels.shape != (images.shape[0],):
        fail(f"mix_batch: expected one label per image ({images.shape[0]}), got shape {tuple(labels.shape)}")
    own = smooth_one_hot(labels, num_classes, label_smoothing)
    one = torch.ones((), dtype=torch.float32, device=images.device)
    if not mixup and not cutmix:
        return LabelMixResult(images, own, one)
    check_generator(generator, images.device, "mix_batch")
    coins = rand((2,), generator).to(images.device)  # [mix at all?, CutMix rather than mixup?]
    other = images.flip(0)
    candidates: list[tuple[Tensor, Tensor]] = []  # (images, lam) of mixup, then CutMix
    if mixup:
        lam = sample_lam(mixup, generator).to(images.device)
        candidates.append(((lam * images + (1 - lam) * other).to(images.dtype), lam))
    if cutmix:
        box, lam = cutmix_box(images.shape[-2], images.shape[-1], sample_lam(cutmix, generator), generator)
        candidates.append((paste(images, other, box.to(images.device)), lam.to(images.device)))
    mixed, lam = candidates[0]
    if len(candidates) == 2:
        use_cut = coins[1] < switch_prob
        mixed, lam = torch.where(use_cut, candidates[1][0], mixed), torch.where(use_cut, candidates[1][1], lam)
    apply = coins[0] < mix_prob
    mixed, lam = torch.where(apply, mixed, images), torch.where(apply, lam, one).float()
    targets = lam * own + (1 - lam) * own.flip(0)
    return LabelMixResult(mixed, targets, lam)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``−Σ_k t_k log softmax(logits)_k`` (timm's SoftTargetCrossEntropy)."""
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
