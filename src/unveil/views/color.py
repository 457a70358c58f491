"""Colour ops on (B, 3, H, W) float [0, 1] batches with per-sample factors (torchvision semantics).

``adjust_*`` and ``solarize`` are the deterministic kernels (pure); ``color_jitter``,
``random_grayscale`` and ``random_solarize`` draw their parameters from a generator.
``inplace=True`` lets the pipeline reuse its own buffer instead of allocating a new image-sized
tensor per op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tensors import no_autocast, rand
from ._base import col, owned

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma with torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    f = col(factor)
    return x.mul_(f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def _brightness_(x: Tensor, factor: Tensor) -> Tensor:
    return x.mul_(col(factor)).clamp_(0.0, 1.0)


def _contrast_(x: Tensor, factor: Tensor) -> Tensor:
    return _blend_(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation_(x: Tensor, factor: Tensor) -> Tensor:
    return _blend_(x, rgb_to_grayscale(x), factor)


def _hue_(x: Tensor, shift: Tensor) -> Tensor:
    # RGB -> hue (Pillow's / torchvision's formula), then closed-form HSV -> RGB written into x, keeping
    # V = max and V - min. Masks come from sign() and cases merge with lerp: on CPU, ==/where/remainder
    # are several times slower than plain arithmetic, and the ops are all memory-bound on a GPU.
    maxc, minc = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    delta = maxc - minc
    r, g, b = x.unbind(dim=1)
    m, d = maxc.squeeze(1), delta.squeeze(1)
    is_r = (m - r).sign_().neg_().add_(1.0)  # 1.0 where red is the max, else 0.0
    is_g = (m - g).sign_().neg_().add_(1.0)
    # delta * hue in sixths: red max g - b, green max 2 d + b - r, blue max 4 d + r - g (red wins ties).
    num = torch.lerp((r - g).add_(d, alpha=4.0), (b - r).add_(d, alpha=2.0), is_g)
    num = torch.lerp(num, g - b, is_r)
    turns = num.div_(d.clamp_min(1e-12).mul_(6.0)).unsqueeze(1).add_(col(shift.to(x.device, torch.float32)))
    phase = torch.arange(6.0, 3.0, -1.0, device=x.device).div_(3.0).view(1, 3, 1, 1)  # 1 + (1, 2/3, 1/3)
    torch.add(turns, phase, out=x)  # x is not read any more; all values > 0, so frac() is mod 1
    return x.frac_().mul_(6.0).sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0).mul_(delta).add_(minc)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by a per-sample factor (B,), clamped to [0, 1]."""
    with no_autocast(x.device):
        return _brightness_(owned(x, False), factor.to(x.device, torch.float32))


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with the mean of its grayscale, per-sample factor (B,)."""
    with no_autocast(x.device):
        return _contrast_(owned(x, False), factor.to(x.device, torch.float32))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its own grayscale, per-sample factor (B,)."""
    with no_autocast(x.device):
        return _saturation_(owned(x, False), factor.to(x.device, torch.float32))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by a per-sample ``shift`` (B,) in turns, in [-0.5, 0.5]: an exact HSV hue shift.

    Why HSV and not a YIQ rotation: YIQ is one 3x3 matmul per image (several times faster on CPU,
    see benchmarks/bench_views.py --ops) but a different colour change, far off torchvision's
    ``adjust_hue`` on saturated colours; this fused HSV round trip is within 1e-5 of it. Per
    channel ``c = min + (max - min) * clamp(|(H + n + 1) mod 6 - 3| - 1, 0, 1)``, H the hue in
    sixths, n = 5, 3, 1 for R, G, B. A shift of 0 returns the input up to float rounding (~1e-6)."""
    with no_autocast(x.device):
        return _hue_(owned(x, False), shift)


def color_jitter(
    x: Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    generator: torch.Generator,
    inplace: bool = False,
) -> Tensor:
    """ColorJitter applied to each sample with probability ``p``; factors drawn per sample,
    brightness/contrast/saturation from [max(0, 1 - s), 1 + s] and hue from [-h, h].

    Unlike torchvision, the order is FIXED (brightness, contrast, saturation, hue) instead of a
    fresh random permutation per image: one order keeps the batch vectorised. A strength of 0
    skips that op, as in torchvision. Unjittered samples get identity factors (no-ops; exact
    except hue, within float rounding), so no device sync is needed to pick the jittered ones."""
    with no_autocast(x.device):
        x = owned(x, inplace)
        u = rand((x.shape[0], 5), generator, x.device)
        on = u[:, 4] < p

        def factor(column: int, strength: float) -> Tensor:
            lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
            return torch.where(on, lo + (hi - lo) * u[:, column], 1.0)

        if brightness > 0:
            x = _brightness_(x, factor(0, brightness))
        if contrast > 0:
            x = _contrast_(x, factor(1, contrast))
        if saturation > 0:
            x = _saturation_(x, factor(2, saturation))
        if hue > 0:
            x = _hue_(x, torch.where(on, hue * (2.0 * u[:, 3] - 1.0), 0.0))
        return x


def random_grayscale(x: Tensor, p: float, generator: torch.Generator, inplace: bool = False) -> Tensor:
    """Replace each sample by its 3-channel grayscale with probability ``p``."""
    with no_autocast(x.device):
        x = owned(x, inplace)
        gray = col(rand((x.shape[0],), generator, x.device) < p)
        return torch.where(gray, rgb_to_grayscale(x), x, out=x)


SOLARIZE_THRESHOLD = 0.5  # on [0, 1] pixels: torchvision's solarize at 0.5, BYOL's, PIL's 128 of 255


def _solarize_(x: Tensor, on: Tensor, threshold: float) -> Tensor:
    flip = (x >= threshold) & col(on)
    return torch.where(flip, 1.0 - x, x, out=x)


def solarize(x: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert every pixel at or above ``threshold``: ``1 − x`` where ``x ≥ threshold`` (torchvision's
    ``solarize``; PIL's ``ImageOps.solarize`` at 128 on uint8)."""
    with no_autocast(x.device):
        x = owned(x, False)
        return _solarize_(x, torch.ones(x.shape[0], dtype=torch.bool, device=x.device), threshold)


def random_solarize(x: Tensor, p: float, generator: torch.Generator, inplace: bool = False,
                    threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Solarize each sample with probability ``p`` (one draw per sample from ``generator``), on the
    images' device: BYOL's second view (p 0.2)."""
    with no_autocast(x.device):
        x = owned(x, inplace)
        return _solarize_(x, rand((x.shape[0],), generator, x.device) < p, threshold)
