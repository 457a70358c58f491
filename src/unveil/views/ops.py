"""Batched SSL view ops: ``(B, C, H, W)`` float in [0, 1] in, same out, per-sample random parameters.

Every random op takes a ``torch.Generator`` and draws all its randomness from it, on the
generator's device (so a CUDA generator never syncs with the host); the draws then move to the
images' device. No op loops over images in Python and none calls ``.item()`` (only the CPU blur
path picks its samples with ``nonzero``, where there is no device to wait for).
All maths runs in float32 with autocast off, so the ops give the same result inside a bf16
autocast region; channels_last inputs work as they are. The deterministic kernels
(``resized_crop``, ``adjust_*``, ``blur``) take per-sample parameter tensors; the tests compare
them with torchvision. The colour ops live in ``color.py`` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tensors import no_autocast, rand, to_device
from ._base import col, owned, to_float
from .color import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    random_grayscale,
    random_solarize,
    rgb_to_grayscale,
    solarize,
)

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur",
    "blur_kernel_size",
    "color_jitter",
    "gaussian_blur",
    "gaussian_kernels",
    "normalize",
    "random_grayscale",
    "random_horizontal_flip",
    "random_resized_crop",
    "random_solarize",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_crop_boxes",
    "solarize",
    "to_float",
]


# ---------------------------------------------------------------------------------------------
# Random resized crop + flip
# ---------------------------------------------------------------------------------------------


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator,
    device: torch.device | None = None,
    attempts: int = 10,
) -> Tensor:
    """Integer crop boxes ``(B, 4)`` = (top, left, h, w) as float, like torchvision's
    ``RandomResizedCrop.get_params`` but vectorised: ``attempts`` candidate (area, log-ratio)
    pairs per sample, the first that fits wins, else the same centre-crop fallback."""
    u = torch.rand((batch, 2 * attempts + 2), generator=generator, device=generator.device)
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, :attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, attempts : 2 * attempts])
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first valid attempt
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # Fallback (torchvision): the whole image, or its centre cropped to the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    # Uniform integer offset in [0, H - h], like torch.randint(0, H - h + 1).
    top = torch.minimum((u[:, -2] * (height - h + 1)).floor(), height - h)
    left = torch.minimum((u[:, -1] * (width - w + 1)).floor(), width - w)
    top = torch.where(found, top, float((height - fh) // 2))
    left = torch.where(found, left, float((width - fw) // 2))
    boxes = torch.stack([top, left, h, w], dim=1)
    return boxes if device is None else to_device(boxes, device)


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop every image to its box (top, left, h, w) and resize it to ``size`` x ``size`` in ONE
    bilinear ``grid_sample`` for the whole batch; ``flip`` (bool, (B,)) mirrors a sample by
    reversing its x sampling positions, so the flip costs nothing.

    The grid is built separably (the boxes are axis-aligned) with torchvision's sampling positions,
    clamped to the box: the result equals ``resized_crop(..., antialias=False)`` up to float
    rounding. There is no antialiasing, which only matters when a crop is much larger than
    ``size``; torchvision's ``roi_align`` would average instead, but is slower here (see bench)."""
    with no_autocast(x.device):
        x = x.float()
        b, _, height, width = x.shape
        top, left, h, w = boxes.to(device=x.device, dtype=torch.float32).unbind(dim=1)
        pos = torch.arange(size, device=x.device, dtype=torch.float32).expand(b, size)
        xpos = pos if flip is None else torch.where(flip.to(x.device).view(-1, 1), size - 1 - pos, pos)

        def axis(p: Tensor, start: Tensor, length: Tensor, full: int) -> Tensor:
            # Pixel centre of output p in the crop (align_corners=False), clamped, in [-1, 1] coords.
            src = ((p + 0.5) * (length / size).view(-1, 1) - 0.5).clamp_(min=0.0)
            src = torch.minimum(src, (length - 1).view(-1, 1)) + start.view(-1, 1)
            return (2.0 * src + 1.0) / full - 1.0

        gx = axis(xpos, left, w, width).view(b, 1, size).expand(b, size, size)
        gy = axis(pos, top, h, height).view(b, size, 1).expand(b, size, size)
        grid = torch.stack([gx, gy], dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    x: Tensor,
    size: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator,
    flip_p: float = 0.0,
) -> Tensor:
    """RandomResizedCrop (+ RandomHorizontalFlip with ``flip_p``, folded into the same resample)."""
    b, _, height, width = x.shape
    boxes = sample_crop_boxes(b, height, width, scale, ratio, generator, x.device)
    flip = rand((b,), generator, x.device) < flip_p if flip_p > 0 else None
    return resized_crop(x, boxes, size, flip)


def random_horizontal_flip(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Mirror each sample with probability ``p`` (standalone; the pipeline folds it into the crop)."""
    flip = rand((x.shape[0],), generator, x.device) < p
    return torch.where(col(flip), x.flip(-1), x)


# ---------------------------------------------------------------------------------------------
# Blur, normalize
# ---------------------------------------------------------------------------------------------


def gaussian_kernels(kernel_size: int, sigma: Tensor) -> Tensor:
    """Per-sample normalised 1-D Gaussian kernels (B, k); sigma (B,). Same taps as torchvision."""
    half = (kernel_size - 1) / 2
    pos = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - half
    return torch.softmax(-0.5 * (pos / sigma.float().view(-1, 1)) ** 2, dim=1)


def blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (B,), reflect padding (torchvision's).

    The batch becomes B*C conv groups: two grouped conv2d calls (a 1 x k then a k x 1 kernel per
    group) instead of B*C separate convolutions or a dense k x k kernel."""
    with no_autocast(x.device):
        b, c, height, width = x.shape
        pad = kernel_size // 2
        taps = gaussian_kernels(kernel_size, sigma.to(x.device)).repeat_interleave(c, dim=0)
        y = x.float().reshape(1, b * c, height, width)
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
        y = F.conv2d(y, taps.view(b * c, 1, 1, kernel_size), groups=b * c)
        y = F.conv2d(y, taps.view(b * c, 1, kernel_size, 1), groups=b * c)
        return y.view(b, c, height, width)


def gaussian_blur(
    x: Tensor,
    kernel_size: int,
    sigma: Sequence[float],
    p: float,
    generator: torch.Generator,
    inplace: bool = False,
) -> Tensor:
    """GaussianBlur applied with probability ``p``, sigma ~ U(sigma[0], sigma[1]) per sample.

    Taps beyond 4 sigma_max (under 1e-4 of the mass) are dropped: with SimCLR's 23-tap kernel at
    224 px and sigma <= 2 that is 17 taps, within 1e-4 of torchvision. On an accelerator every
    sample is convolved and the unblurred ones are taken back from ``x`` (a ``where``, so that
    shapes stay static, nothing syncs with the host, and a TF32 convolution cannot touch them). On
    CPU there is nothing to sync with, so only the chosen samples are blurred."""
    with no_autocast(x.device):
        kernel_size = min(kernel_size, 2 * math.ceil(4 * sigma[1]) + 1)
        u = rand((x.shape[0], 2), generator, x.device)
        on = u[:, 1] < p
        sig = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]
        if x.device.type != "cpu":
            return torch.where(col(on), blur(x, kernel_size, sig), x)
        x = owned(x, inplace)
        idx = on.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        return x.index_copy_(0, idx, blur(x.index_select(0, idx), kernel_size, sig[idx]))


def normalize(
    x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, inplace: bool = False
) -> Tensor:
    """(x - mean) / std per channel."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    with no_autocast(x.device):
        if inplace and x.dtype == torch.float32 and x.stride(1) != 0:
            return x.sub_(mean_t).div_(std_t)
        return (x.float() - mean_t).div_(std_t)


def blur_kernel_size(size: int, frac: float) -> int:
    """Odd kernel side ~ ``frac`` of the image side (SimCLR: 10 %), at least 3."""
    return max(3, 2 * (int(frac * size) // 2) + 1)
