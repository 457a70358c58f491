"""MSCN's two-branch masking for the siamese methods (SimCLR, BYOL): docs/design.md 3.3-3.5.

A method with a ``masking:`` setting compares branch-A-masked versions of view 1 with
branch-B-masked versions of view 2 (``corruptions.mscn_masker.MSCNMasker``: high-pass, grid /
focal masks, noise fill, ``num_masks`` per view). With ``num_masks = k`` each view has k masked
batches of B (mask-major) and the loss is the mean over the k×k cross-view pairs; SimCLR encodes
all 2·k·B inputs in one pass, BYOL each B-batch alone (``per_batch``).
``same_view: true`` masks the *same* augmented view twice (paper 4's Table 7 ablation).

A model trained on high-passed inputs is evaluated on high-passed inputs too (docs/design.md 3.1,
A.2): ``eval_filter`` describes that filter as plain data ({"high_pass": {"sigma", "kernel_size"}}),
so it can travel in checkpoints' configs and in exported safetensors metadata, and
``input_filter`` turns it back into a function.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..corruptions.mscn import high_pass, high_pass_kernel_size
from ..corruptions.mscn_masker import MSCNMasker
from ..errors import UserError, require

MASKING_KEYS = ("branch_a", "branch_b", "num_masks", "high_pass_sigma", "high_pass_kernel", "same_view")


def build_masker(masking: dict[str, Any] | None) -> tuple[MSCNMasker | None, bool]:
    """(masker, same_view) from a method's ``masking:`` mapping; (None, False) without one."""
    if masking is None:
        return None, False
    require(isinstance(masking, dict), f"method.masking must be a mapping ({', '.join(MASKING_KEYS)}), got {masking!r}")
    unknown = sorted(set(masking) - set(MASKING_KEYS))
    require(not unknown, f"method.masking has no setting {unknown[0] if unknown else ''}: choose from {', '.join(MASKING_KEYS)}")
    settings = dict(masking)
    same_view = settings.pop("same_view", False)
    require(isinstance(same_view, bool), f"method.masking.same_view must be true or false, got {same_view!r}")
    for key in ("branch_a", "branch_b"):  # recipes hand over omegaconf / YAML mappings: plain dicts for MaskConfig
        if isinstance(settings.get(key), dict):
            settings[key] = dict(settings[key])
    try:
        return MSCNMasker(**settings), same_view
    except UserError as exc:
        raise UserError(f"method.masking: {exc}") from None


ViewFn = Callable[[Tensor, torch.Generator], Tensor]


def two_views(views: ViewFn | tuple[ViewFn, ViewFn], same_view: bool, images: Tensor,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """View 1 and view 2, drawn in that order from ``generator``. ``views`` is one pipeline for both
    (SimCLR) or a (view 1, view 2) pair (BYOL's asymmetric views); ``same_view`` returns view 1 twice."""
    first, second = views if isinstance(views, tuple) else (views, views)
    v1 = first(images, generator)
    return v1, (v1 if same_view else second(images, generator))


def masked_pair(views: ViewFn | tuple[ViewFn, ViewFn], masker: MSCNMasker | None, same_view: bool,
                images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
    """The two batches the encoder compares, and how many masked versions each holds.

    Without a masker: (view 1, view 2, 1), drawn exactly as the unmasked methods always did.
    With one: (view 1 masked by branch A, view 2 masked by branch B, num_masks), each
    (num_masks·B, C, H, W) mask-major; ``same_view`` masks one view twice."""
    v1, v2 = two_views(views, same_view, images, generator)
    if masker is None:
        return v1, v2, 1
    a, b = masker(v1, v2, generator)
    return a.images, b.images, masker.num_masks


def per_batch(fn: Callable[[Tensor], Tensor], x: Tensor, k: int) -> Tensor:
    """``fn`` on each of the k mask-major batches of ``x`` separately, outputs concatenated: every
    batch gets its own BatchNorm statistics (BYOL's and lightly's code forward each view alone)."""
    return fn(x) if k == 1 else torch.cat([fn(part) for part in x.chunk(k)])


def mean_over_pairs(loss_fn: Callable[..., Tensor], a: Sequence[Tensor], b: Sequence[Tensor], k: int) -> Tensor:
    """``loss_fn(*a_i, *b_j)`` averaged over the k×k pairs (mask i of view 1, mask j of view 2).

    ``a`` and ``b`` are tensors of k·B rows, mask-major (what the encoder made of the two masked
    batches); with k = 1 this is ``loss_fn(*a, *b)``."""
    if k == 1:
        return loss_fn(*a, *b)
    a_parts = list(zip(*(t.chunk(k) for t in a), strict=True))
    b_parts = list(zip(*(t.chunk(k) for t in b), strict=True))
    losses = [loss_fn(*ai, *bj) for ai, bj in itertools.product(a_parts, b_parts)]
    return torch.stack(losses).mean()


def eval_filter_of(masker: MSCNMasker | None) -> dict[str, Any] | None:
    """The input filter evaluation must apply (the training high-pass), as data; None without one."""
    if masker is None or masker.high_pass_sigma is None:
        return None
    sigma = float(masker.high_pass_sigma)
    return {"high_pass": {"sigma": sigma, "kernel_size": high_pass_kernel_size(sigma, masker.high_pass_kernel)}}


def check_input_filter(spec: Any) -> dict[str, Any] | None:
    """``spec`` validated (None, or {"high_pass": {"sigma": float, "kernel_size": odd int | None}})."""
    if spec is None:
        return None
    require(isinstance(spec, dict) and set(spec) == {"high_pass"} and isinstance(spec["high_pass"], dict),
            f"input filter must be null or {{high_pass: {{sigma: ..., kernel_size: ...}}}}, got {spec!r}")
    hp = dict(spec["high_pass"])
    unknown = sorted(set(hp) - {"sigma", "kernel_size"})
    require(not unknown, f"input filter high_pass has no setting '{unknown[0] if unknown else ''}': use sigma, kernel_size")
    require("sigma" in hp, "input filter high_pass needs a sigma")
    try:
        kernel = high_pass_kernel_size(hp["sigma"], hp.get("kernel_size"))
    except UserError as exc:
        raise UserError(f"input filter: {exc}") from None
    return {"high_pass": {"sigma": float(hp["sigma"]), "kernel_size": kernel}}


def input_filter(spec: dict[str, Any] | None) -> Callable[[Tensor], Tensor]:
    """The function ``spec`` describes (identity for None), applied to normalised float batches."""
    spec = check_input_filter(spec)
    if spec is None:
        return _identity
    hp = spec["high_pass"]
    sigma, kernel = hp["sigma"], hp["kernel_size"]

    def apply(x: Tensor) -> Tensor:
        return high_pass(x, sigma, kernel)

    return apply


def _identity(x: Tensor) -> Tensor:
    return x


def branch_views(views: ViewFn | tuple[ViewFn, ViewFn], masker: MSCNMasker | None, same_view: bool,
                 images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """Preview rows: the plain views and (with masking) the first masked version of each branch."""
    v1, v2 = two_views(views, same_view, images, generator)
    rows = {"view 1": v1} if same_view else {"view 1": v1, "view 2": v2}
    if masker is not None:
        a, b = masker(v1, v2, generator)
        n = images.shape[0]
        rows["view 1 masked (A)"] = a.images[:n]
        rows[f"view {1 if same_view else 2} masked (B)"] = b.images[:n]
    return rows
