"""The papers' corruptions as pure, batched, generator-seeded tensor functions.

Every function takes a batch ``(B, C, H, W)`` on any device (float32, bf16, ...), draws its
randomness from the ``torch.Generator`` passed in (on the batch's device), loops over no images,
and returns the corrupted batch in the input dtype together with what a loss needs, as a small
NamedTuple. Each corruption also has a frozen-dataclass wrapper holding validated parameters,
registered by name for recipes: ``build_corruption("overlay", alpha=0.3)(x, generator)``.

| paper | functions | registry names |
|---|---|---|
| OverlayAE | `paired_overlay`, `random_pixel_mask`, `autoaugment` | overlay, pixel_mask, autoaugment |
| ContextPatchAE | `context_patches`, `neighbour_index`, `patchify` | context_patches |
| MSCN | `high_pass`, `grid_mask`, `focal_mask`, `mscn_mask`, `MaskConfig`, `MSCNMasker` | high_pass, mscn |
| MV-MAE | `random_token_masking`, `random_masking`, `block_token_masking` | token_mask |
| MixDet / Un-Mix | `cutmix_box`, `box_masks`, `unmix`, `mix_between_branches`, `mix_within_batch` | unmix, mix_between_branches, mix_within_batch |

Parameter errors raise `CorruptionError`, both a `UserError` (one line at the CLI) and a
`ValueError`.
"""

from ._common import CorruptionError, sample_beta, sample_gamma
from .autoaugment import AutoAugmentCorruption, autoaugment
from .context import ContextPatches, ContextPatchify, context_patches, neighbour_index, patchify
from .mixing import (
    BoxResult,
    BranchMixResult,
    MixBetweenBranches,
    MixWithinBatch,
    Unmix,
    UnmixResult,
    WithinBatchMixResult,
    box_masks,
    cutmix_box,
    mix_between_branches,
    mix_within_batch,
    paste,
    sample_lam,
    unmix,
)
from .mscn import (
    HighPass,
    MaskConfig,
    MSCNMaskResult,
    focal_mask,
    grid_mask,
    high_pass,
    mscn_mask,
)
from .mscn_masker import MSCNMasker, MSCNViews
from .overlay import OverlayResult, PairedOverlay, paired_overlay
from .patch_mask import (
    MaskedTokens,
    TokenMask,
    TokenMasking,
    block_token_masking,
    random_masking,
    random_token_masking,
)
from .pixel_mask import PixelMaskResult, RandomPixelMask, random_pixel_mask
from .registry import CORRUPTIONS, Corruption, build_corruption, corruption_params, describe

__all__ = [
    "CORRUPTIONS",
    "AutoAugmentCorruption",
    "BoxResult",
    "BranchMixResult",
    "ContextPatches",
    "ContextPatchify",
    "Corruption",
    "CorruptionError",
    "HighPass",
    "MSCNMaskResult",
    "MSCNMasker",
    "MSCNViews",
    "MaskConfig",
    "MaskedTokens",
    "MixBetweenBranches",
    "MixWithinBatch",
    "OverlayResult",
    "PairedOverlay",
    "PixelMaskResult",
    "RandomPixelMask",
    "TokenMask",
    "TokenMasking",
    "Unmix",
    "UnmixResult",
    "WithinBatchMixResult",
    "autoaugment",
    "block_token_masking",
    "box_masks",
    "build_corruption",
    "context_patches",
    "corruption_params",
    "cutmix_box",
    "describe",
    "focal_mask",
    "grid_mask",
    "high_pass",
    "mix_between_branches",
    "mix_within_batch",
    "mscn_mask",
    "neighbour_index",
    "paired_overlay",
    "paste",
    "patchify",
    "random_masking",
    "random_pixel_mask",
    "random_token_masking",
    "sample_beta",
    "sample_gamma",
    "sample_lam",
    "unmix",
]
