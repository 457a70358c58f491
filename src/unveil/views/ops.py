"""Batched SSL view ops: ``(B, C, H, W)`` float in [0, 1] in, same out, per-sample random parameters.

Every random op takes a ``torch.Generator`` and draws all its randomness from it in one call, on
the generator's device (so a CUDA generator never syncs with the host). The results move to the
images' device. No op loops over images in Python and none calls ``.item()``.
All maths runs in float32 with autocast off, so the ops give the same result inside a bf16
autocast region. The deterministic kernels (``resized_crop``, ``adjust_*``, ``blur``) take
per-sample parameter tensors; the tests compare them with torchvision.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn autocast off on ``device``: views are computed in float32 whatever the caller's region."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1] in one pass (float input is only cast to float32)."""
    if images.dtype == torch.uint8:
        return images.mul(1.0 / 255.0)  # a float scalar promotes uint8 to float32 in one kernel
    return images.float()


def _rand(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device, then moved to ``device`` without a sync."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return u.to(device, non_blocking=True)


def _col(v: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting per-sample parameters over images."""
    return v.view(-1, 1, 1, 1)


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
    return boxes if device is None else boxes.to(device, non_blocking=True)


def resized_crop(x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop every image to its box (top, left, h, w) and resize to ``size`` x ``size``, bilinear,
    in ONE ``grid_sample`` for the whole batch; ``flip`` (bool, (B,)) mirrors a sample by a
    negative x scale in its affine matrix, so flipping costs nothing."""
    with no_autocast(x.device):
        x = x.float()
        b, c, height, width = x.shape
        boxes = boxes.to(device=x.device, dtype=torch.float32)
        top, left, h, w = boxes.unbind(dim=1)
        sx, sy = w / width, h / height
        if flip is not None:
            sx = torch.where(flip.to(x.device), -sx, sx)
        # Output pixel centre u in normalised coords maps to left + (u + 1) w / 2 in the image.
        tx = (2 * left + w) / width - 1
        ty = (2 * top + h) / height - 1
        zero = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
        grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
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
    flip = _rand(generator, (b,), x.device) < flip_p if flip_p > 0 else None
    return resized_crop(x, boxes, size, flip)


def random_horizontal_flip(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Mirror each sample with probability ``p`` (standalone; the pipeline folds it into the crop)."""
    flip = _rand(generator, (x.shape[0],), x.device) < p
    return torch.where(_col(flip), x.flip(-1), x)


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = _col(factor)
    return (x * f + other * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by a per-sample factor (B,), clamped to [0, 1]."""
    return (x * _col(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with the mean of its grayscale, per-sample factor (B,)."""
    return _blend(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its own grayscale, per-sample factor (B,)."""
    return _blend(x, rgb_to_grayscale(x), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by a per-sample ``shift`` (B,) in turns, in [-0.5, 0.5]: an exact HSV hue shift.

    Why HSV and not a YIQ rotation: YIQ is one 3x3 matmul but a different colour change (up to
    ~0.1 off torchvision's ``adjust_hue`` on saturated colours), while this fused HSV round trip
    keeps V = max and V - min and is within 1e-5 of torchvision; it costs ~20 elementwise passes
    (see benchmarks/bench_views.py). The HSV -> RGB step uses the closed form
    ``c = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6h) mod 6``, n = 5, 3, 1."""
    minc, maxc = torch.aminmax(x, dim=1, keepdim=True)
    delta = maxc - minc
    rgbc = (maxc - x) / torch.where(delta > 0, delta, 1.0)  # distances to max, in units of delta
    rc, gc, bc = rgbc.unbind(dim=1)
    r, g, _ = x.unbind(dim=1)
    m = maxc.squeeze(1)
    hue6 = torch.where(m == r, bc - gc, torch.where(m == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue6 = hue6.unsqueeze(1) + 6.0 * _col(shift)
    offsets = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(hue6 + offsets, 6.0)
    return maxc - delta * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def color_jitter(
    x: Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    generator: torch.Generator,
) -> Tensor:
    """ColorJitter applied to each sample with probability ``p``; factors drawn per sample,
    brightness/contrast/saturation from [max(0, 1 - s), 1 + s] and hue from [-h, h].

    Unlike torchvision, the order is FIXED (brightness, contrast, saturation, hue) instead of a
    fresh random permutation per image: one order keeps the batch vectorised. A strength of 0
    skips that op, as in torchvision. Unjittered samples get identity factors (exact no-ops)."""
    b = x.shape[0]
    with no_autocast(x.device):
        x = x.float()
        u = _rand(generator, (b, 5), x.device)
        on = u[:, 4] < p

        def factor(col: int, strength: float) -> Tensor:
            lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
            return torch.where(on, lo + (hi - lo) * u[:, col], 1.0)

        if brightness > 0:
            x = adjust_brightness(x, factor(0, brightness))
        if contrast > 0:
            x = adjust_contrast(x, factor(1, contrast))
        if saturation > 0:
            x = adjust_saturation(x, factor(2, saturation))
        if hue > 0:
            shift = torch.where(on, hue * (2.0 * u[:, 3] - 1.0), 0.0)
            x = torch.where(_col(on), adjust_hue(x, shift), x)
        return x


def random_grayscale(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Replace each sample by its 3-channel grayscale with probability ``p``."""
    with no_autocast(x.device):
        x = x.float()
        gray = _rand(generator, (x.shape[0],), x.device) < p
        return torch.where(_col(gray), rgb_to_grayscale(x).expand_as(x), x)


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
) -> Tensor:
    """GaussianBlur applied with probability ``p``, sigma ~ U(sigma[0], sigma[1]) per sample.
    Unblurred samples get sigma 1e-3, whose kernel is exactly (0, .., 1, .., 0): an exact no-op
    that keeps shapes static and needs no device sync to pick the blurred samples."""
    u = _rand(generator, (x.shape[0], 2), x.device)
    sig = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]
    return blur(x, kernel_size, torch.where(u[:, 1] < p, sig, 1e-3))


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """(x - mean) / std per channel."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() - mean_t) / std_t


def blur_kernel_size(size: int, frac: float) -> int:
    """Odd kernel side ~ ``frac`` of the image side (SimCLR: 10 %), at least 3."""
    return max(3, 2 * (int(frac * size) // 2) + 1)
