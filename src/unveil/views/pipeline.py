"""The view pipeline (uint8 batch on the device -> augmented float views) and the eval transform."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..errors import require
from ..tensors import no_autocast
from . import ops
from .config import ViewConfig


def _check_images(images: Tensor) -> None:
    require(
        images.ndim == 4 and images.shape[1] in (1, 3),
        f"views expect an image batch (B, 3, H, W) (or 1 channel), got shape {tuple(images.shape)}",
    )


class ViewPipeline(nn.Module):
    """Random resized crop + flip -> colour jitter -> grayscale -> blur -> solarize -> normalize, batched.

    One call makes one view of every image; call it twice with the same generator for two views.
    All randomness comes from ``generator`` (best on the images' device: a CPU generator with CUDA
    images works too, at the cost of small host-to-device copies). Input uint8 [0, 255] or float
    [0, 1], 1 or 3 channels (1 is repeated to 3); output float32 (B, 3, S, S), also under autocast.
    Per-sample parameters follow torchvision's transforms, except that colour jitter uses a fixed
    order (brightness, contrast, saturation, hue) and the crop is resampled without antialiasing
    (see ``ops``)."""

    def __init__(self, cfg: ViewConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blur_kernel = ops.blur_kernel_size(cfg.size, cfg.blur_kernel_frac)
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}  # mean/std per device, built once

    def extra_repr(self) -> str:
        return repr(self.cfg)

    def _mean_std(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._stats:
            mean = torch.tensor(self.cfg.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
            std = torch.tensor(self.cfg.std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
            self._stats[device] = (mean, std)
        return self._stats[device]

    def _crop_is_noop(self, height: int, width: int) -> bool:
        cfg = self.cfg
        full = cfg.crop_scale == (1.0, 1.0) and cfg.crop_ratio == (1.0, 1.0)
        return full and cfg.flip_p == 0 and height == width == cfg.size

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check_images(images)
        cfg = self.cfg
        with no_autocast(images.device):
            x = ops.to_float(images)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if not self._crop_is_noop(x.shape[2], x.shape[3]):
                x = ops.random_resized_crop(x, cfg.size, cfg.crop_scale, cfg.crop_ratio, generator, cfg.flip_p)
            elif x.data_ptr() == images.data_ptr() or x.stride(1) == 0:
                x = x.clone()  # the ops below write into x: never into the caller's tensor
            # From here on x is our own buffer, so every op works in place (see _base.owned).
            if cfg.jitter_p > 0 and max(cfg.jitter) > 0:
                x = ops.color_jitter(x, *cfg.jitter, p=cfg.jitter_p, generator=generator, inplace=True)
            if cfg.gray_p > 0:
                x = ops.random_grayscale(x, cfg.gray_p, generator, inplace=True)
            if cfg.blur_p > 0:
                x = ops.gaussian_blur(x, self.blur_kernel, cfg.blur_sigma, cfg.blur_p, generator, inplace=True)
            if cfg.solarize_p > 0:  # after blur, as BYOL's pipeline; p 0 draws nothing (streams unchanged)
                x = ops.random_solarize(x, cfg.solarize_p, generator, inplace=True)
            if cfg.normalize:
                mean, std = self._mean_std(x.device)
                x = x.sub_(mean).div_(std)
            return x


def eval_transform(
    images: Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    normalize: bool = True,
) -> Tensor:
    """Deterministic evaluation view: uint8 -> float [0, 1]; if the images are not ``size`` x
    ``size``: for size >= 64 resize the shorter side to round(size / 0.875) and centre-crop
    (ImageNet style: 224 <- 256), for small images a plain resize (cropping 32 px images would lose
    too much); resizing is antialiased bilinear. Then normalize (optional)."""
    _check_images(images)
    with no_autocast(images.device):
        x = ops.to_float(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (size, size):
            if size >= 64:
                x = TF.resize(x, [round(size / 0.875)], antialias=True)
                x = TF.center_crop(x, [size, size])
            else:
                x = TF.resize(x, [size, size], antialias=True)
        if normalize:
            x = ops.normalize(x, mean, std)
        elif x.data_ptr() == images.data_ptr():
            x = x.clone()
        return x
