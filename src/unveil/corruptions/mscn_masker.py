"""MSCN's two-branch masker (docs/design.md 3.5): asymmetric per-branch configs and multimasks.

Masks must go on two *different* augmented views (Table 7). Branch A masks view 1 and branch B
masks view 2, each with its own `MaskConfig` (default asymmetry: p_apply 1.0 vs 0.5, noise std
0.18 vs 0.14). With ``num_masks = 2`` every view gets two masked versions (the multimask mode;
the loss then averages over all cross-view pairs); ``num_masks = 1`` is the plain mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._common import check_batch, check_generator, check_positive_int, fail
from .mscn import MaskConfig, MSCNMaskResult, high_pass, high_pass_kernel_size, mscn_mask
from .registry import Corruption, register_corruption

BRANCH_A = MaskConfig(p_apply=1.0, noise_std=0.18)
BRANCH_B = MaskConfig(p_apply=0.5, noise_std=0.14)


class MSCNViews(NamedTuple):
    view1: MSCNMaskResult  # view 1 masked with branch A's config
    view2: MSCNMaskResult  # view 2 masked with branch B's config


def as_mask_config(value: MaskConfig | dict[str, Any] | None, default: MaskConfig, name: str) -> MaskConfig:
    """A MaskConfig, or a (partial) mapping of its fields applied on top of the branch default."""
    if value is None:
        return default
    if isinstance(value, MaskConfig):
        return value
    if not isinstance(value, dict):
        fail(f"{name} must be a mapping of MaskConfig fields, got {value!r}")
    known = {f.name for f in dataclasses.fields(MaskConfig)}
    for key in value:
        if key not in known:
            fail(f"{name} has no field '{key}': choose from {', '.join(sorted(known))}")
    return dataclasses.replace(default, **value)


@register_corruption("mscn")
@dataclass(frozen=True)
class MSCNMasker(Corruption):
    """MSCN masking: high-pass, then per-branch grid/focal masks with noise, num_masks per view."""

    two_views = True

    branch_a: MaskConfig | dict | None = field(default_factory=lambda: BRANCH_A)
    branch_b: MaskConfig | dict | None = field(default_factory=lambda: BRANCH_B)
    num_masks: int = 1
    high_pass_sigma: float | None = 5.0  # None: the views are masked as given (no high-pass)
    high_pass_kernel: int | None = None  # None: 2·ceil(3σ)+1

    def __post_init__(self) -> None:
        object.__setattr__(self, "branch_a", as_mask_config(self.branch_a, BRANCH_A, "branch_a"))
        object.__setattr__(self, "branch_b", as_mask_config(self.branch_b, BRANCH_B, "branch_b"))
        check_positive_int(self.num_masks, "num_masks")
        if self.high_pass_sigma is not None:
            high_pass_kernel_size(self.high_pass_sigma, self.high_pass_kernel)

    def filter(self, x: Tensor) -> Tensor:
        """The high-pass step alone (also the evaluation-time transform)."""
        if self.high_pass_sigma is None:
            return x
        return high_pass(x, self.high_pass_sigma, self.high_pass_kernel)

    def __call__(self, view1: Tensor, view2: Tensor, generator: torch.Generator) -> MSCNViews:
        """Masked versions of both views, each (num_masks·B, C, H, W), mask-major."""
        check_batch(view1, "mscn view1")
        check_batch(view2, "mscn view2")
        if view1.shape != view2.shape:
            fail(f"mscn: the two views must have the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}")
        check_generator(generator, view1.device, "mscn")
        a = mscn_mask(self.filter(view1), self.branch_a, generator, self.num_masks)
        b = mscn_mask(self.filter(view2), self.branch_b, generator, self.num_masks)
        return MSCNViews(a, b)
