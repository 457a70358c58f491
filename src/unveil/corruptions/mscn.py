"""Masked Siamese ConvNets (MSCN, docs/design.md 3.3-3.5): high-pass filter, grid/focal masks, noise fill.

Pipeline per masked view: ``x_hp = x − blur_σ(x)`` (after the standard views and normalisation),
then a spatial mask (focal with probability ``p_focal``, else a random grid mask), drawn
independently per channel with probability ``p_ind`` (else shared by the channels), applied with
probability ``p_apply``, filled with ``fill + ε``, ε ~ N(0, noise_std²) i.i.d. per element:
``x_masked = (1 − M)·x_hp + M·(fill + ε)``. After the high-pass the image is about zero-mean, so
fill 0 means "no information". The per-branch configs and multimasks are in ``mscn_masker.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..tensors import no_autocast, rand
from ._common import (
    check_batch,
    check_fraction,
    check_generator,
    check_positive_int,
    compute_dtype,
    fail,
)
from .registry import Corruption, register_corruption


def gaussian_kernel1d(sigma: float, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps (float32), the same as torchvision's ``gaussian_blur`` kernel."""
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, device=device)
    pdf = torch.exp(-0.5 * (t / sigma) ** 2)
    return pdf / pdf.sum()


def high_pass_kernel_size(sigma: float, kernel_size: int | None) -> int:
    """``kernel_size`` checked, or the default 2·ceil(3σ)+1 (31 for σ = 5)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        fail(f"high-pass sigma must be a number > 0, got {sigma!r}")
    if kernel_size is None:
        return 2 * math.ceil(3 * sigma) + 1
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        fail(f"high-pass kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    return kernel_size


def reflect_blur_matrix(size: int, taps: Tensor) -> Tensor:
    """(size, size) matrix M with ``M @ v`` = ``v`` blurred by ``taps`` under reflect padding."""
    k = taps.numel()
    i = torch.arange(size, device=taps.device).view(size, 1).expand(size, k)
    j = i + torch.arange(k, device=taps.device).view(1, k) - k // 2
    j = torch.where(j < 0, -j, j)
    j = torch.where(j > size - 1, 2 * (size - 1) - j, j)
    m = torch.zeros(size, size, dtype=taps.dtype, device=taps.device)
    return m.index_put_((i, j), taps.expand(size, k), accumulate=True)


def high_pass(x: Tensor, sigma: float = 5.0, kernel_size: int | None = None) -> Tensor:
    """``x − GaussianBlur_σ(x)`` per channel with reflect padding (torchvision's blur, same taps).

    Used on the training views and at evaluation time alike. The separable blur is two batched
    matmuls with banded (H, H) and (W, W) matrices that fold the reflect padding in, which is
    2-4x faster than padded depthwise convolutions on CPU and tensor-core friendly on GPU.
    Computed in float32 for reduced-precision inputs (the difference of two close numbers),
    returned in the input dtype.
    """
    check_batch(x, "high_pass")
    k = high_pass_kernel_size(sigma, kernel_size)
    b, c, h, w = x.shape
    if k // 2 >= h or k // 2 >= w:
        fail(
            f"high-pass kernel_size {k} (sigma {sigma}) is too large for {h}x{w} images with reflect padding: "
            f"use kernel_size <= {2 * min(h, w) - 1} or a smaller sigma"
        )
    with no_autocast(x.device):
        xf = x.to(compute_dtype(x))
        taps = gaussian_kernel1d(float(sigma), k, x.device).to(xf.dtype)
        rows, cols = reflect_blur_matrix(h, taps), reflect_blur_matrix(w, taps)
        blurred = torch.matmul(torch.matmul(rows, xf.reshape(b * c, h, w)), cols.T)
        return (xf - blurred.view(b, c, h, w)).to(x.dtype)


def _cell_index(size: int, cell_size: float | None, grid_cells: int, device: torch.device) -> tuple[Tensor, int]:
    """Cell number of every pixel row (or column), and the number of cells along that axis."""
    pos = torch.arange(size, device=device)
    if cell_size is None:  # exactly grid_cells cells, sizes floor/ceil of size/grid_cells
        n = min(grid_cells, size)
        return pos * n // size, n
    n = math.ceil(size / cell_size)
    return (pos / cell_size).floor().long().clamp_max(n - 1), n


def _grid_from_noise(noise: Tensor, ratio: float, height: int, width: int, cell_size, grid_cells: int) -> Tensor:
    """Grid mask (n, c, H, W) from uniform noise (n, c, gh·gw): the round(r·cells) lowest cells."""
    n, c, n_cells = noise.shape
    rows, gh = _cell_index(height, cell_size, grid_cells, noise.device)
    cols, gw = _cell_index(width, cell_size, grid_cells, noise.device)
    chosen = noise.argsort(dim=-1)[..., : round(ratio * n_cells)]
    cells = torch.zeros(n, c, n_cells, dtype=torch.bool, device=noise.device).scatter_(-1, chosen, True)
    return cells.view(n, c, gh, gw).index_select(2, rows).index_select(3, cols)  # two cheap gathers


def _grid_cells(height: int, width: int, cell_size, grid_cells: int) -> int:
    return _cell_index(height, cell_size, grid_cells, None)[1] * _cell_index(width, cell_size, grid_cells, None)[1]


def grid_mask(
    size: Sequence[int],
    ratio: float,
    generator: torch.Generator,
    cell_size: float | None = None,
    grid_cells: int = 7,
) -> Tensor:
    """Random grid mask, bool (B, C, H, W), True = masked, on the generator's device.

    The image is cut into cells (``cell_size`` px, or ``grid_cells`` × ``grid_cells`` cells when
    None: 32 px at 224 = 7×7, kept at 7×7 for other sizes); in every (image, channel) exactly
    ``round(ratio · cells)`` cells (Python's round), chosen uniformly without replacement
    (argsort of noise), are masked. Pass C = 1 for a mask shared by the channels.
    """
    b, c, h, w = size
    check_fraction(ratio, "ratio (fraction of masked grid cells)")
    noise = rand((b, c, _grid_cells(h, w, cell_size, grid_cells)), generator)
    return _grid_from_noise(noise, ratio, h, w, cell_size, grid_cells)


def focal_side(size: int, ratio: float) -> int:
    """Side of the kept window so that the masked area is about ``ratio``: round(S·√(1 − r))."""
    return max(1, min(size, round(size * math.sqrt(1.0 - ratio))))


FOCAL_ASPECT = (3 / 4, 4 / 3)  # focal_scale windows' aspect ratio range: RandomResizedCrop's default, as MSN's


def focal_window_sizes(shape_draws: Tensor, scale: Sequence[float], height: int,
                       width: int) -> tuple[Tensor, Tensor]:
    """Window (height, width) in px per mask from uniform draws (..., 2): area fraction uniform in
    ``scale``, aspect ratio log-uniform in ``FOCAL_ASPECT`` (torchvision's RandomResizedCrop
    parameters, MSN's focal crops), rounded and clipped to the image: a crop *without* resizing."""
    area = height * width * (scale[0] + (scale[1] - scale[0]) * shape_draws[..., 0])
    lo, hi = math.log(FOCAL_ASPECT[0]), math.log(FOCAL_ASPECT[1])
    aspect = torch.exp(lo + (hi - lo) * shape_draws[..., 1])
    wh = torch.sqrt(area / aspect).round().clamp(1, height)
    ww = torch.sqrt(area * aspect).round().clamp(1, width)
    return wh, ww


def _focal_from_corners(corners: Tensor, ratio: float, height: int, width: int, side: int | None,
                        sizes: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Focal mask (n, c, H, W) from uniform corner draws (n, c, 2): True outside the window. The
    window is ``sizes`` (per-mask (n, c) heights and widths) when given, else one fixed side."""
    if sizes is not None:
        wh, ww = sizes[0][..., None, None], sizes[1][..., None, None]
    elif side is None:
        wh, ww = focal_side(height, ratio), focal_side(width, ratio)
    else:
        wh, ww = min(side, height), min(side, width)
    top = (corners[..., 0, None, None] * (height - wh + 1)).floor()
    left = (corners[..., 1, None, None] * (width - ww + 1)).floor()
    r = torch.arange(height, device=corners.device).view(height, 1)
    q = torch.arange(width, device=corners.device).view(1, width)
    return ((r < top) | (r >= top + wh)) | ((q < left) | (q >= left + ww))  # small, then one full pass


def focal_mask(
    size: Sequence[int], ratio: float, generator: torch.Generator, side: int | None = None,
    scale: Sequence[float] | None = None,
) -> Tensor:
    """Focal mask, bool (B, C, H, W), True = masked: everything outside one random window is masked.

    The window (a random crop without resizing) is ``side`` px square, or with ``scale`` a random
    rectangle per mask whose area is a fraction in ``scale`` of the image (``focal_window_sizes``),
    or when both are None round(H·√(1 − r)) × round(W·√(1 − r)), so the masked fraction is about
    ``ratio``; its position is uniform over the valid top-left corners.
    """
    b, c, h, w = size
    check_fraction(ratio, "ratio (fraction of the image outside the focal window)")
    corners = rand((b, c, 2), generator)
    if scale is None:
        return _focal_from_corners(corners, ratio, h, w, side)
    _check_focal_scale(scale)
    sizes = focal_window_sizes(rand((b, c, 2), generator), scale, h, w)
    return _focal_from_corners(corners, ratio, h, w, None, sizes)


def _check_focal_scale(scale: Any) -> tuple[float, float]:
    ok = (isinstance(scale, (tuple, list)) and len(scale) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale))
    if not ok or not 0 < scale[0] <= scale[1] <= 1:
        fail(f"focal_scale must be [min, max] area fractions with 0 < min <= max <= 1 (MSN: [0.05, 0.3]), "
             f"got {scale!r}")
    return float(scale[0]), float(scale[1])


@dataclass(frozen=True)
class MaskConfig:
    """One branch's MSCN masking settings (defaults: docs/design.md 3.4-3.5, branch A)."""

    p_apply: float = 1.0  # probability that an image is masked at all
    p_focal: float = 0.4  # focal mask, else random grid mask (Table 8 best)
    p_ind: float = 0.8  # channel-wise independent masks, else one mask for all channels (Table 10)
    ratio: float = 0.15  # masked fraction: grid cells, or the area outside the focal window (Table 5)
    cell_size: float | None = None  # grid cell side in px; None = a grid_cells × grid_cells grid
    grid_cells: int = 7  # cells per side when cell_size is None (32 px at 224)
    noise_std: float = 0.18  # std of the Gaussian noise added to the fill value
    fill: float = 0.0  # value of masked pixels before the noise (0 = null after the high-pass)
    focal_side: int | None = None  # focal window side in px; None = round(S·√(1 − ratio))
    ind_focal: bool = True  # channel-independent masks also for focal masks
    # focal window area as a random fraction of the image per mask (MSN's focal crops: [0.05, 0.3]), aspect
    # ratio in [3/4, 4/3]; None = the fixed window of focal_side / ratio
    focal_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("p_apply", "p_focal", "p_ind", "ratio"):
            check_fraction(getattr(self, name), name)
        if self.cell_size is not None and (
            isinstance(self.cell_size, bool) or not isinstance(self.cell_size, (int, float)) or self.cell_size <= 0
        ):
            fail(f"cell_size must be a positive number of pixels or null, got {self.cell_size!r}")
        check_positive_int(self.grid_cells, "grid_cells")
        if isinstance(self.noise_std, bool) or not isinstance(self.noise_std, (int, float)) or self.noise_std < 0:
            fail(f"noise_std must be a number >= 0, got {self.noise_std!r}")
        if isinstance(self.fill, bool) or not isinstance(self.fill, (int, float)):
            fail(f"fill must be a number, got {self.fill!r}")
        if self.focal_side is not None:
            check_positive_int(self.focal_side, "focal_side")
        if not isinstance(self.ind_focal, bool):
            fail(f"ind_focal must be true or false, got {self.ind_focal!r}")
        if self.focal_scale is not None:
            # YAML lists -> a tuple, so configs compare and hash alike
            object.__setattr__(self, "focal_scale", _check_focal_scale(self.focal_scale))
            if self.focal_side is not None:
                fail("focal_side and focal_scale both set: choose a fixed window side or a random area range")


class MSCNMaskResult(NamedTuple):
    images: Tensor  # (num_masks·B, C, H, W), mask-major: rows [k·B, (k+1)·B) are masked version k
    mask: Tensor  # (num_masks·B, C, H, W) bool, True = masked (all False where not applied)
    applied: Tensor  # (num_masks·B,) bool: the image was masked
    focal: Tensor  # (num_masks·B,) bool: focal mask drawn (else grid)


def mscn_mask(x: Tensor, config: MaskConfig, generator: torch.Generator, num_masks: int = 1) -> MSCNMaskResult:
    """``num_masks`` independently masked versions of every image of ``x`` (usually high-passed).

    Results are stacked mask-major, (num_masks·B, ...): ``.view(num_masks, B, ...)`` splits them.
    Both mask types are drawn for every image and selected per image with ``torch.where`` (no
    per-image branching).
    """
    check_batch(x, "mscn_mask")
    check_generator(generator, x.device, "mscn_mask")
    if not isinstance(config, MaskConfig):
        fail(f"mscn_mask: config must be a MaskConfig, got {type(config).__name__}")
    check_positive_int(num_masks, "num_masks")
    xs = x.repeat(num_masks, 1, 1, 1) if num_masks > 1 else x
    n, c, h, w = xs.shape
    u = rand((n, 3), generator)
    focal, independent, applied = u[:, 0] < config.p_focal, u[:, 1] < config.p_ind, u[:, 2] < config.p_apply
    # Draw both mask types' parameters per (image, channel); shared-mask images copy channel 0's
    # draws to every channel. Selections happen on these small tensors; the pixel-level work is
    # one gather (grid), one broadcast compare (focal) and one where.
    shared = ~(independent & (~focal | config.ind_focal)).view(-1, 1, 1)
    cell_noise = rand((n, c, _grid_cells(h, w, config.cell_size, config.grid_cells)), generator)
    corners = rand((n, c, 2), generator)
    cell_noise = torch.where(shared, cell_noise[:, :1], cell_noise)
    corners = torch.where(shared, corners[:, :1], corners)
    sizes = None
    if config.focal_scale is not None:  # drawn only when asked for: other configs keep their random streams
        shape_draws = rand((n, c, 2), generator)
        shape_draws = torch.where(shared, shape_draws[:, :1], shape_draws)
        sizes = focal_window_sizes(shape_draws, config.focal_scale, h, w)
    grid = _grid_from_noise(cell_noise, config.ratio, h, w, config.cell_size, config.grid_cells)
    outside = _focal_from_corners(corners, config.ratio, h, w, config.focal_side, sizes)
    mask = torch.where(focal.view(-1, 1, 1, 1), outside, grid) & applied.view(-1, 1, 1, 1)
    if config.noise_std > 0:
        noise = torch.randn((n, c, h, w), generator=generator, device=x.device).mul_(config.noise_std).add_(config.fill)
        images = torch.where(mask, noise.to(x.dtype), xs)
    else:
        images = xs.masked_fill(mask, config.fill)
    return MSCNMaskResult(images, mask, applied, focal)


@register_corruption("high_pass")
@dataclass(frozen=True)
class HighPass(Corruption):
    """MSCN high-pass filter: x − GaussianBlur_sigma(x), reflect padding (train and eval)."""

    sigma: float = 5.0
    kernel_size: int | None = None

    def __post_init__(self) -> None:
        high_pass_kernel_size(self.sigma, self.kernel_size)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return high_pass(x, self.sigma, self.kernel_size)  # deterministic: the generator is unused
