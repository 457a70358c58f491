"""Token (patch) masking for masked autoencoders (MV-MAE, docs/design.md 4.2 step 2).

``random_token_masking`` is MAE's ``random_masking``: per-sample uniform noise, argsort, keep the
first ``int(N·(1 − r))`` tokens of the shuffle. The mask (1 = masked) is in the original token
order; ``ids_restore`` un-shuffles the decoder's sequence. ``block_token_masking`` masks BEiT-style
rectangles of tokens instead, with the same outputs and the same exact masked count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..tensors import rand
from ._common import check_fraction, check_generator, check_positive_int, fail
from .registry import Corruption, register_corruption


class TokenMask(NamedTuple):
    ids_keep: Tensor  # (B, n_keep) long: indices of the visible tokens
    ids_restore: Tensor  # (B, N) long: position of each original token in the shuffled order
    mask: Tensor  # (B, N) float, 1 = masked, 0 = kept (MAE convention)


class MaskedTokens(NamedTuple):
    kept: Tensor  # (B, n_keep, D): the visible tokens, as MAE's x_masked
    mask: Tensor  # (B, N) float, 1 = masked
    ids_restore: Tensor  # (B, N) long
    ids_keep: Tensor  # (B, n_keep) long


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """MAE's ``int(N·(1 − r))``, guarded against float round-off (0.1 * 100 = 9.999...)."""
    return int(num_tokens * (1.0 - mask_ratio) + 1e-6)


def _from_order(ids_shuffle: Tensor, n_keep: int) -> TokenMask:
    """MAE's bookkeeping from a per-sample token order whose first ``n_keep`` entries are kept."""
    b, n = ids_shuffle.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=ids_shuffle.device)
    mask[:, :n_keep] = 0
    return TokenMask(ids_shuffle[:, :n_keep], ids_restore, torch.gather(mask, 1, ids_restore))


def _check(batch: int, num_tokens: int, mask_ratio: float, generator: torch.Generator, device) -> torch.device:
    check_positive_int(batch, "batch", minimum=0)
    check_positive_int(num_tokens, "num_tokens")
    check_fraction(mask_ratio, "mask_ratio", high_open=True)
    device = torch.device(device) if device is not None else getattr(generator, "device", torch.device("cpu"))
    check_generator(generator, device, "token masking")
    return device


def random_token_masking(
    batch: int, num_tokens: int, mask_ratio: float, generator: torch.Generator, device=None
) -> TokenMask:
    """Independent per-sample random masking (MAE shuffle); exactly N − int(N·(1 − r)) masked."""
    _check(batch, num_tokens, mask_ratio, generator, device)
    n_keep = num_kept(num_tokens, mask_ratio)
    noise = rand((batch, num_tokens), generator)
    return _from_order(torch.argsort(noise, dim=1), n_keep)


def random_masking(x: Tensor, mask_ratio: float, generator: torch.Generator) -> MaskedTokens:
    """MAE's ``random_masking`` on tokens ``x`` (B, N, D): the kept tokens plus the bookkeeping."""
    if x.dim() != 3:
        fail(f"random_masking: expected tokens (B, N, D), got {tuple(x.shape)}")
    b, n, d = x.shape
    m = random_token_masking(b, n, mask_ratio, generator, x.device)
    kept = torch.gather(x, 1, m.ids_keep.unsqueeze(-1).expand(-1, -1, d))
    return MaskedTokens(kept, m.mask, m.ids_restore, m.ids_keep)


def block_token_masking(
    batch: int,
    grid: int | tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator,
    device=None,
    min_block: int = 16,
    max_block: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_rounds: int = 64,
) -> TokenMask:
    """BEiT-style block-wise masking on a ``grid`` of tokens, vectorised over the batch.

    Each round every image proposes one rectangle (area uniform in [min_block, remaining],
    log-uniform aspect, uniform position, strictly smaller than the grid as in BEiT), accepted
    when it adds between 1 and ``remaining`` new tokens. The loop is over rounds (blocks), not
    images, and stops once every image is within ``min_block`` of the target (checked every 8
    rounds, one host sync each) or after ``max_rounds``. Any shortfall (the last few tokens
    fit no block) is filled with random single tokens, so every image has exactly the same
    masked count as ``random_token_masking`` and the outputs batch like MAE's.
    """
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    device = _check(batch, gh * gw, mask_ratio, generator, device)
    check_positive_int(min_block, "min_block")
    check_positive_int(max_rounds, "max_rounds", minimum=0)
    if not (len(aspect) == 2 and 0 < aspect[0] <= aspect[1]):
        fail(f"aspect must be [lo, hi] with 0 < lo <= hi, got {aspect!r}")
    n = gh * gw
    n_keep = num_kept(n, mask_ratio)
    target = n - n_keep
    cap = target if max_block is None else min(check_positive_int(max_block, "max_block"), target)
    stop_below = max(1, min(min_block, cap))  # done once every image is this close to the target
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    rows = torch.arange(gh, device=device).view(1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, gw)
    mask = torch.zeros(batch, gh, gw, dtype=torch.bool, device=device)
    count = torch.zeros(batch, device=device)
    for round_ in range(max_rounds):
        if round_ % 8 == 0 and not bool((target - count >= stop_below).any()):
            break
        remaining = target - count
        u = rand((batch, 4), generator)
        hi = remaining.clamp(max=cap)
        lo = torch.minimum(hi, torch.full_like(hi, float(min_block)))
        area = lo + (hi - lo) * u[:, 0]
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        h = torch.sqrt(area * ratio).round()
        w = torch.sqrt(area / ratio).round()
        fits = (h >= 1) & (w >= 1) & (h < gh) & (w < gw)
        top = (u[:, 2] * (gh - h + 1)).floor().view(-1, 1, 1)
        left = (u[:, 3] * (gw - w + 1)).floor().view(-1, 1, 1)
        block = (rows >= top) & (rows < top + h.view(-1, 1, 1)) & (cols >= left) & (cols < left + w.view(-1, 1, 1))
        new = (block & ~mask).flatten(1).sum(1)
        accept = fits & (new > 0) & (new <= remaining)
        mask |= block & accept.view(-1, 1, 1)
        count = count + torch.where(accept, new, torch.zeros_like(new))
    # Order tokens: unmasked (random order) first, block-masked last; the first n_keep are kept,
    # so a shortfall is topped up with random unmasked tokens.
    key = mask.flatten(1).float() * 2.0 + rand((batch, n), generator)
    return _from_order(torch.argsort(key, dim=1), n_keep)


@register_corruption("token_mask")
@dataclass(frozen=True)
class TokenMasking(Corruption):
    """MAE patch masking on an image batch: random (MAE) or block-wise (BEiT) token masks."""

    mask_ratio: float = 0.8  # MV-MAE's ratio (abstract); MAE uses 0.75
    patch_size: int = 16
    mode: str = "random"  # random | block
    min_block: int = 16  # block mode: smallest block, in tokens

    def __post_init__(self) -> None:
        check_fraction(self.mask_ratio, "mask_ratio", high_open=True)
        check_positive_int(self.patch_size, "patch_size")
        check_positive_int(self.min_block, "min_block")
        if self.mode not in ("random", "block"):
            fail(f"mode must be 'random' or 'block', got {self.mode!r}")

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            fail(f"patch_size {self.patch_size} must divide the image size {height}x{width}")
        return height // self.patch_size, width // self.patch_size

    def __call__(self, x: Tensor, generator: torch.Generator) -> TokenMask:
        """Masks for the (H/p)·(W/p) patch tokens of ``x`` (B, C, H, W), row-major token order."""
        gh, gw = self.grid(x.shape[-2], x.shape[-1])
        if self.mode == "block":
            return block_token_masking(x.shape[0], (gh, gw), self.mask_ratio, generator, x.device, self.min_block)
        return random_token_masking(x.shape[0], gh * gw, self.mask_ratio, generator, x.device)
