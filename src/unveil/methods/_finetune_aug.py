"""MAE's fine-tune augmentation on batches: timm's RandAugment and RandomErasing, per sample, seeded.

MAE's main_finetune.py trains on timm's ``create_transform(auto_augment="rand-m9-mstd0.5-inc1",
re_prob=0.25, re_mode="pixel", re_count=1)``: after the random-resized crop and flip, RandAugment
(``rand_augment``) on the 8-bit image, then normalisation, then RandomErasing (``random_erasing``)
on the normalised tensor. timm runs both per PIL image in the data loader with Python's global RNG;
here they run on the uint8-derived batch on the device, every draw from the step's generator (so a
resumed run is exact), with the loop over ops, never over images.

RandAugment (timm ``RandAugment`` + ``AugmentOp``): for each of ``n`` layers every image draws an op
uniformly (with replacement) from timm's 15 ("increasing" set with ``inc1``), applies it with
probability ``p`` (0.5), at magnitude ``clip(m + mstd · N(0, 1), 0, 10)`` and, for signed ops, a
random sign; op arguments follow timm's ``LEVEL_TO_ARG``. Pixel ops follow PIL's on uint8 (the
8-bit grid after each op, blends truncated as PIL's): equal to timm's output for every colour op
(AutoContrast within 1 level), tests/protocols/test_vit_finetune.py. The geometric ops use PIL's affine maps
(shear and translate about the corner, rotate about the centre) resampled bicubically (MAE's
interpolation) with the mean colour outside; torch's bicubic kernel (a = -0.75) is not PIL's
(a = -0.5), so edges differ by a few levels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError

LEVEL_DENOM = 10.0
# timm's _RAND_INCREASING_TRANSFORMS (``inc1``) and _RAND_TRANSFORMS (``inc0``), in timm's order
INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                  "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
PLAIN_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
             "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing", "ContrastIncreasing",
          "BrightnessIncreasing", "SharpnessIncreasing"}
MAE_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string (``rand-m9-mstd0.5-inc1``)."""

    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0  # > 100 or inf: uniform in [0, magnitude] (timm)
    prob: float = 0.5
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return INCREASING_OPS if self.increasing else PLAIN_OPS


def parse_rand_augment(spec: str) -> RandAugmentSpec:
    """timm's ``rand-...`` config string: ``m`` magnitude, ``n`` layers, ``mstd``, ``p``, ``inc``."""
    parts = spec.split("-") if isinstance(spec, str) else []
    if not parts or parts[0] != "rand":
        raise UserError(f"rand_augment must be a timm RandAugment string such as {MAE_RAND_AUGMENT!r} "
                        f"(MAE's), got {spec!r}")
    values: dict[str, float] = {}
    for part in parts[1:]:
        found = re.fullmatch(r"(mstd|m|n|p|inc)(\d+(?:\.\d*)?)", part)
        if not found:
            raise UserError(f"rand_augment {spec!r}: unknown section {part!r} (known: m<magnitude>, n<layers>, "
                            "mstd<std>, p<prob>, inc<0|1>)")
        values[found.group(1)] = float(found.group(2))
    std = values.get("mstd", 0.0)
    out = RandAugmentSpec(magnitude=values.get("m", 10.0), num_layers=int(values.get("n", 2)),
                          magnitude_std=math.inf if std > 100 else std, prob=values.get("p", 0.5),
                          increasing=bool(int(values.get("inc", 0))))
    if out.num_layers < 1 or not 0 <= out.prob <= 1:
        raise UserError(f"rand_augment {spec!r}: needs n >= 1 and p in [0, 1]")
    return out


# ------------------------------------------------------------------------------------------------
# The ops: x (n, 3, H, W) float holding uint8 values 0..255, v (n,) the op's argument per image
# ------------------------------------------------------------------------------------------------


def _grey(x: Tensor) -> Tensor:
    """PIL's RGB -> L (ITU-R 601-2 luma, rounded), (n, 1, H, W)."""
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).round()


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``ImageEnhance``: ``degenerate + factor · (x − degenerate)``, clipped to 0..255."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).floor().clamp(0, 255)


def _auto_contrast(x: Tensor, v: Tensor) -> Tensor:
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp_min(1.0)
    return torch.where(hi > lo, ((x - lo) * scale).floor().clamp(0, 255), x)


def _equalize(x: Tensor, v: Tensor) -> Tensor:
    return TF.equalize(x.to(torch.uint8)).to(x.dtype)


def _invert(x: Tensor, v: Tensor) -> Tensor:
    return 255.0 - x


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    keep = (255 - (2 ** (8 - bits.long().clamp(0, 8)) - 1)).to(torch.uint8).view(-1, 1, 1, 1)
    return torch.bitwise_and(x.to(torch.uint8), keep).to(x.dtype)


def _solarize(x: Tensor, thresh: Tensor) -> Tensor:
    return torch.where(x >= thresh.view(-1, 1, 1, 1), 255.0 - x, x)


def _solarize_add(x: Tensor, add: Tensor) -> Tensor:
    return torch.where(x < 128, (x + add.view(-1, 1, 1, 1)).clamp(max=255), x)


def _color(x: Tensor, f: Tensor) -> Tensor:
    return _blend(_grey(x).expand_as(x), x, f)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = (_grey(x).mean((1, 2, 3), keepdim=True) + 0.5).floor()
    return _blend(mean.expand_as(x), x, f)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return _blend(torch.zeros_like(x), x, f)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def _sharpness(x: Tensor, f: Tensor) -> Tensor:
    kernel = _SMOOTH.to(x.device).view(1, 1, 3, 3).expand(x.shape[1], 1, 3, 3)
    smooth = F.conv2d(x, kernel, padding=1, groups=x.shape[1]).round()
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth[:, :, 1:-1, 1:-1]  # PIL keeps the border pixels
    return _blend(degenerate, x, f)


def _affine(x: Tensor, matrix: Tensor, fill: Tensor) -> Tensor:
    """Resample with per-image affine maps ``matrix`` (n, 2, 3) from output to input pixel-centre
    coordinates (PIL's ``Image.transform(AFFINE)`` convention), bicubic, ``fill`` outside."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype) + 0.5,
                            torch.arange(w, device=x.device, dtype=x.dtype) + 0.5, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(1, h * w, 3)
    src = points @ matrix.transpose(1, 2)  # (n, h·w, 2) input coordinates
    inside = ((src[..., 0] >= 0) & (src[..., 0] < w) & (src[..., 1] >= 0) & (src[..., 1] < h)).view(n, 1, h, w)
    grid = torch.stack([2 * src[..., 0] / w - 1, 2 * src[..., 1] / h - 1], dim=-1).view(n, h, w, 2)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return torch.where(inside, out.round().clamp(0, 255), fill.view(1, -1, 1, 1))


def _matrix(a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], -2)


def _geometric(kind: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def op(x: Tensor, v: Tensor, fill: Tensor) -> Tensor:
        one, zero = torch.ones_like(v), torch.zeros_like(v)
        h, w = x.shape[-2:]
        if kind == "ShearX":
            m = _matrix(one, v, zero, zero, one, zero)
        elif kind == "ShearY":
            m = _matrix(one, zero, zero, v, one, zero)
        elif kind == "TranslateXRel":
            m = _matrix(one, zero, v * w, zero, one, zero)
        elif kind == "TranslateYRel":
            m = _matrix(one, zero, zero, zero, one, v * h)
        else:  # Rotate: PIL's ``rotate(degrees)``, counter-clockwise about the centre
            a = -torch.deg2rad(v)
            cx, cy = w / 2.0, h / 2.0
            cos, sin = torch.cos(a), torch.sin(a)
            m = _matrix(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
        return _affine(x, m, fill)

    return op


def _level(name: str, m: Tensor, sign: Tensor) -> Tensor:
    """timm's ``LEVEL_TO_ARG`` for magnitudes ``m`` (n,), signs ±1 (n,) applied where timm negates."""
    level = m / LEVEL_DENOM
    if name == "Rotate":
        return level * 30.0 * sign
    if name in ("ShearX", "ShearY"):
        return level * 0.3 * sign
    if name in ("TranslateXRel", "TranslateYRel"):
        return level * 0.45 * sign
    if name == "Posterize":
        return (level * 4).floor()
    if name == "PosterizeIncreasing":
        return 4 - (level * 4).floor()
    if name == "Solarize":
        return (level * 256).floor().clamp(max=256)
    if name == "SolarizeIncreasing":
        return 256 - (level * 256).floor().clamp(max=256)
    if name == "SolarizeAdd":
        return (level * 110).floor().clamp(max=128)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name.endswith("Increasing"):  # Color/Contrast/Brightness/SharpnessIncreasing: 1 ± 0.9 level, >= 0.1
        return (1.0 + level * 0.9 * sign).clamp(min=0.1)
    return m  # AutoContrast, Equalize, Invert: no argument


_PIXEL_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "AutoContrast": _auto_contrast, "Equalize": _equalize, "Invert": _invert,
    "Posterize": _posterize, "PosterizeIncreasing": _posterize, "Solarize": _solarize,
    "SolarizeIncreasing": _solarize, "SolarizeAdd": _solarize_add, "Color": _color, "ColorIncreasing": _color,
    "Contrast": _contrast, "ContrastIncreasing": _contrast, "Brightness": _brightness,
    "BrightnessIncreasing": _brightness, "Sharpness": _sharpness, "SharpnessIncreasing": _sharpness,
}
_GEOMETRIC_OPS = {name: _geometric(name) for name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")}


def apply_op(name: str, x: Tensor, magnitude: Tensor, sign: Tensor, fill: Sequence[float]) -> Tensor:
    """One RandAugment op on images ``x`` (n, 3, H, W) holding 0..255, per-image magnitudes and signs."""
    v = _level(name, magnitude.to(x.dtype), sign.to(x.dtype))
    if name in _GEOMETRIC_OPS:
        return _GEOMETRIC_OPS[name](x, v, torch.as_tensor(fill, dtype=x.dtype, device=x.device))
    return _PIXEL_OPS[name](x, v)


def rand_augment(x: Tensor, generator: torch.Generator, spec: RandAugmentSpec | str = MAE_RAND_AUGMENT,
                 fill: Sequence[float] = (0.485, 0.456, 0.406)) -> Tensor:
    """RandAugment on a float batch in [0, 1] (B, 3, H, W); returns a new batch in [0, 1] on the
    8-bit grid. ``fill`` is the colour (in [0, 1]) outside rotated/sheared/translated images (timm:
    the normalisation mean). Every draw comes from ``generator``; one host copy per batch."""
    if isinstance(spec, str):
        spec = parse_rand_augment(spec)
    ops = spec.ops
    b, layers = x.shape[0], spec.num_layers
    u = torch.rand((b, layers, 4), generator=generator, device=generator.device)
    noise = torch.randn((b, layers), generator=generator, device=generator.device)
    choice = (u[..., 0] * len(ops)).long().clamp(max=len(ops) - 1)
    applied = u[..., 1] <= spec.prob
    sign = torch.where(u[..., 2] > 0.5, -1.0, 1.0)  # timm's _randomly_negate
    if math.isinf(spec.magnitude_std):  # timm: uniform(0, m)
        magnitude = u[..., 3] * spec.magnitude
    else:
        magnitude = spec.magnitude + spec.magnitude_std * noise
    magnitude = magnitude.clamp(0.0, LEVEL_DENOM)
    op_of = torch.where(applied, choice, -1).cpu()  # the only host sync: which images take which op
    out = (x.float() * 255.0).round().clamp(0, 255)
    fill255 = [round(255 * f) for f in fill]
    for layer in range(layers):
        for k in op_of[:, layer].unique().tolist():
            if k < 0:
                continue
            idx = (op_of[:, layer] == k).nonzero().squeeze(1).to(x.device)
            got = apply_op(ops[k], out.index_select(0, idx), magnitude[idx, layer].to(x.device),
                           sign[idx, layer].to(x.device), fill255)
            out.index_copy_(0, idx, got)
    return out / 255.0


def random_erasing(x: Tensor, prob: float, generator: torch.Generator, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 10) -> Tensor:
    """timm's ``RandomErasing(prob, mode="pixel", max_count=1)`` per image: with probability ``prob``
    one rectangle of ``uniform(min_area, max_area)`` of the image and log-uniform aspect in
    ``[min_aspect, 1/min_aspect]`` (the first of ``attempts`` draws that fits strictly inside; none
    fits: no erasing) is replaced by N(0, 1) noise per pixel and channel (the tensor is normalised)."""
    if prob <= 0:
        return x
    b, c, h, w = x.shape
    dev = generator.device
    u = torch.rand((b, 2 * attempts + 3), generator=generator, device=dev)
    noise = torch.randn((b, c, h, w), generator=generator, device=dev)
    area = (min_area + (max_area - min_area) * u[:, :attempts]) * (h * w)
    lo, hi = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = torch.exp(lo + (hi - lo) * u[:, attempts:2 * attempts])
    eh, ew = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    valid = (ew < w) & (eh < h)
    first = valid.to(torch.uint8).argmax(1, keepdim=True)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    on = (u[:, -3] < prob) & valid.any(1)
    top = (u[:, -2] * (h - eh + 1)).floor().clamp(max=h - eh)
    left = (u[:, -1] * (w - ew + 1)).floor().clamp(max=w - ew)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    mask = (on.view(-1, 1, 1) & (rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    return torch.where(mask.unsqueeze(1).to(x.device), noise.to(device=x.device, dtype=x.dtype), x)
