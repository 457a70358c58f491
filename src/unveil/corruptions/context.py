"""Context patches (ContextPatchAE, docs/design.md 2.1): a G×G grid of patches and each one's 8 neighbours.

The autoencoder reconstructs a target patch from its 8 neighbours, concatenated in a fixed order
(NW, N, NE, W, E, SW, S, SE) so the embedding knows where each came from. Neighbours outside the
grid are zero patches. ``neighbour_index`` is the fixed (G·G, 8) gather table, with index G·G
meaning "the zero patch", so a method can encode the G·G real patches once plus one zero patch
and gather the rest (docs/design.md 2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._common import check_batch, check_positive_int, fail
from .registry import Corruption, register_corruption

# (row, column) offsets of the 8 neighbours, raster order: NW, N, NE, W, E, SW, S, SE.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
NEIGHBOUR_NAMES = ("NW", "N", "NE", "W", "E", "SW", "S", "SE")


class ContextPatches(NamedTuple):
    patches: Tensor  # (B, G*G, C, p, p): patch k is grid cell (k // G, k % G), row-major
    neighbour_index: Tensor  # (G*G, 8) long; value G*G = the zero patch
    neighbours: Tensor  # (B, G*G, 8, C, p, p): the 8 neighbours of each patch, zeros outside the grid


def neighbour_index(grid: int = 4, device: torch.device | str | None = None) -> Tensor:
    """(grid², 8) table: entry [k, n] is the patch index of neighbour n of patch k, or grid² if outside."""
    check_positive_int(grid, "grid")
    rows = torch.arange(grid, device=device).view(grid, 1, 1)
    cols = torch.arange(grid, device=device).view(1, grid, 1)
    dr = torch.tensor([o[0] for o in NEIGHBOUR_OFFSETS], device=device).view(1, 1, 8)
    dc = torch.tensor([o[1] for o in NEIGHBOUR_OFFSETS], device=device).view(1, 1, 8)
    r, c = rows + dr, cols + dc
    inside = (r >= 0) & (r < grid) & (c >= 0) & (c < grid)
    index = torch.where(inside, r * grid + c, torch.full_like(r, grid * grid))
    return index.reshape(grid * grid, 8)


def patchify(x: Tensor, grid: int = 4) -> Tensor:
    """(B, C, H, W) -> (B, grid², C, H/grid, W/grid), patches in row-major grid order."""
    check_batch(x, "context_patches", floating=False)
    check_positive_int(grid, "grid")
    b, c, h, w = x.shape
    if h % grid or w % grid:
        fail(f"grid={grid} must divide the image size {h}x{w} (e.g. grid 4 on 32x32 gives 8x8 patches)")
    ph, pw = h // grid, w // grid
    return x.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, ph, pw)


def context_patches(x: Tensor, grid: int = 4) -> ContextPatches:
    """Split each image into grid×grid patches and gather every patch's 8 neighbours (zero outside)."""
    patches = patchify(x, grid)
    b, n, c, ph, pw = patches.shape
    index = neighbour_index(grid, device=x.device)
    padded = torch.cat([patches, patches.new_zeros(b, 1, c, ph, pw)], dim=1)  # index n = zero patch
    neighbours = padded[:, index]  # (B, n, 8, C, ph, pw), one gather
    return ContextPatches(patches, index, neighbours)


@register_corruption("context_patches")
@dataclass(frozen=True)
class ContextPatchify(Corruption):
    """Context patches (ContextPatchAE): grid×grid patches and each patch's 8 neighbours."""

    grid: int = 4

    def __post_init__(self) -> None:
        check_positive_int(self.grid, "grid")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> ContextPatches:
        return context_patches(x, self.grid)  # deterministic: the generator is accepted, unused
