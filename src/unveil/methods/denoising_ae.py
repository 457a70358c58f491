"""Denoising ResNet autoencoder: the overlay paper's method and its baselines (docs/design.md §1).

A training step crops and flips each image (in [0, 1], no normalization: the decoder ends in a
Sigmoid), corrupts the batch, and regresses the *clean* view with a mean-squared error:

* ``overlay``: x_hat = alpha * x_partner + (1 - alpha) * x, partner drawn from the batch (paper);
* ``pixel_mask``: zero ``mask_ratio`` of the pixel locations (all channels), the random-mask baseline;
* ``autoaugment``: torchvision's AutoAugment policy on the input (target: the clean view by
  default, or the augmented one with ``autoaugment_target="augmented"``);
* ``none``: a plain autoencoder (as ``overlay`` with alpha = 0).

The encoder is what gets evaluated and exported (``backbone``); features are its pooled map. The
method builds its own encoder from ``arch``/``cifar``; when the recipe's backbone section names the
same AE encoder (``ae_resnet18`` with the same ``cifar_stem``), that module is used instead, and a
mismatch is an error rather than a silent choice. Any other backbone passed in is ignored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.resnet_ae import CONFIGS, UPSAMPLE_MODES, ResNetAEDecoder, ResNetAEEncoder
from ..corruptions import CORRUPTIONS, Corruption, build_corruption, corruption_params
from ..corruptions.autoaugment import POLICIES
from ..corruptions.overlay import PARTNER_MODES, check_alpha
from ..errors import require
from ..views import ViewPipeline, eval_transform, view_preset
from . import register
from .base import Method

# The registered corruptions this method trains with, and which ``method.*`` setting feeds each of
# their parameters; ``none`` (a plain autoencoder) is this method's own option, not a corruption.
CORRUPTION_SETTINGS: dict[str, dict[str, str]] = {
    "overlay": {"alpha": "alpha", "partner": "partner"},
    "pixel_mask": {"ratio": "mask_ratio"},
    "autoaugment": {"policy": "autoaugment_policy"},
}
SUPPORTED_CORRUPTIONS = (*CORRUPTION_SETTINGS, "none")
for _name, _settings in CORRUPTION_SETTINGS.items():  # a renamed corruption or parameter fails here, at import
    if _name not in CORRUPTIONS or not set(_settings) <= set(corruption_params(_name)):
        raise RuntimeError(f"denoising_ae: corruption '{_name}' with parameters {sorted(_settings)} is not registered")


@register("denoising_ae", summary="ResNet autoencoder that undoes a corruption: paired-image overlay, random pixel mask, AutoAugment, or none (plain AE)", paper="1 Paired image overlay")
class DenoisingAE(Method):
    """ResNet autoencoder trained to undo a corruption (overlay, pixel mask, AutoAugment, none)."""
    limits = {"alpha": "[0, 1]", "mask_ratio": "[0, 1]", "image_size": ">= 1"}

    def __init__(self, backbone: nn.Module | None = None, data_info: Any = None, arch: str = "resnet50",
                 cifar: bool | None = None, upsample: str = "transpose", corruption: str = "overlay",
                 alpha: float | list[float] = 0.3, partner: str = "perm", mask_ratio: float = 0.02,
                 autoaugment_target: str = "clean", autoaugment_policy: str = "imagenet",
                 views: dict[str, Any] | None = None, image_size: int | None = None):
        super().__init__()
        require(arch in CONFIGS, f"method.arch must be one of {', '.join(CONFIGS)}, got {arch!r}")
        require(upsample in UPSAMPLE_MODES, f"method.upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        require(corruption in SUPPORTED_CORRUPTIONS,
                f"method.corruption must be one of {', '.join(SUPPORTED_CORRUPTIONS)}, got {corruption!r}")
        require(partner in PARTNER_MODES, f"method.partner must be one of {', '.join(PARTNER_MODES)}, got {partner!r}")
        require(autoaugment_policy in POLICIES,
                f"method.autoaugment_policy must be one of {', '.join(POLICIES)}, got {autoaugment_policy!r}")
        require(autoaugment_target in ("clean", "augmented"),
                f"method.autoaugment_target must be clean or augmented, got {autoaugment_target!r}")
        check_alpha(alpha)  # a number (or [lo, hi] range) in [0, 0.5): the image itself dominates
        require(isinstance(mask_ratio, (int, float)) and 0 <= mask_ratio < 1,
                f"method.mask_ratio is a fraction in [0, 1) (0.02 = 2 % of the pixels), got {mask_ratio!r}")
        size = image_size or getattr(data_info, "image_size", None) or (32 if cifar in (None, True) else 224)
        if cifar is None:
            cifar = size <= 64
        # Both halves reconstruct at the input size only when it is a multiple of the total stride.
        stride = 8 if cifar else 32
        require(size % stride == 0, f"image size {size} must be a multiple of {stride} for the "
                f"{'CIFAR' if cifar else 'ImageNet'}-style autoencoder: set method.image_size or data.image_size")
        self.arch, self.cifar, self.upsample, self.image_size = arch, bool(cifar), upsample, int(size)
        self.corruption, self.partner, self.mask_ratio = corruption, partner, float(mask_ratio)
        self.alpha = tuple(alpha) if isinstance(alpha, (list, tuple)) else float(alpha)
        self.autoaugment_target, self.autoaugment_policy = autoaugment_target, autoaugment_policy
        require(not (views or {}).get("normalize", False),
                "method.views.normalize must stay false: the decoder's Sigmoid reconstructs pixels in [0, 1]")
        self.view_overrides = {**(views or {}), "normalize": False}
        self.corruption_fn()  # the registry's own checks, before any data is loaded

        # Reuse the engine's backbone when the recipe's backbone section names the same AE encoder.
        if isinstance(backbone, ResNetAEEncoder):
            require((backbone.arch, backbone.cifar) == (arch, self.cifar),
                    f"backbone is ae_{backbone.arch} (cifar_stem={backbone.cifar}) but method.arch={arch}, "
                    f"cifar={self.cifar}: make the backbone section match the method section")
            self.encoder = backbone
        else:
            self.encoder = ResNetAEEncoder(arch, self.cifar)
        self.decoder = ResNetAEDecoder(arch, self.cifar, upsample)
        self.views = ViewPipeline(view_preset("crop-flip", self.image_size, **self.view_overrides))

    normalized_inputs = False  # encoders see [0, 1] pixels; fine-tuning keeps that convention

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    @property
    def backbone_spec(self) -> dict[str, Any]:
        """``build_backbone`` arguments that rebuild :attr:`backbone` (for export / evaluation)."""
        return {"name": f"ae_{self.arch}", "cifar_stem": self.cifar}

    # -- pieces -------------------------------------------------------------------------------

    def make_views(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Random resized crop (scale 0.2-1) + flip, float in [0, 1]."""
        return self.views(images, generator)

    def eval_view(self, images: Tensor) -> Tensor:
        return eval_transform(images, self.image_size, None, None, normalize=False)

    def corruption_fn(self) -> Corruption | None:
        """The registered corruption built from the current settings (``None`` for ``none``).

        Built per call rather than once, so changing ``corruption``/``alpha``/... on a built method
        takes effect; construction is a few parameter checks, nothing next to a training step."""
        if self.corruption == "none":
            return None
        settings = CORRUPTION_SETTINGS[self.corruption]
        return build_corruption(self.corruption, **{param: getattr(self, attr) for param, attr in settings.items()})

    def corrupt(self, clean: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(input, target) for the configured corruption; inputs and targets in [0, 1]."""
        fn = self.corruption_fn()
        if fn is None:
            return clean, clean
        out = fn(clean, generator)
        corrupted = out if isinstance(out, Tensor) else out.images  # autoaugment returns the batch itself
        target = corrupted if self.corruption == "autoaugment" and self.autoaugment_target == "augmented" else clean
        return corrupted, target

    def reconstruct_from(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder.forward_map(x))

    # -- method contract ----------------------------------------------------------------------

    def forward(self, images: Tensor, labels: Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        require(generator is not None, "denoising_ae needs a torch.Generator for its views and corruption")
        clean = self.make_views(images, generator)
        corrupted, target = self.corrupt(clean, generator)
        recon = self.reconstruct_from(corrupted)
        loss = F.mse_loss(recon.float(), target.float())
        with torch.no_grad():
            input_mse = F.mse_loss(corrupted.float(), target.float())  # what "copy the input" would score
        return {"loss": loss, "input_mse": input_mse}

    def embed(self, images: Tensor) -> Tensor:
        """Pooled encoder features of the deterministic evaluation view (pixels in [0, 1])."""
        return self.encoder(self.eval_view(images))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(clean, corrupted, reconstruction) of the evaluation view, for figures."""
        clean = self.eval_view(images)
        corrupted, _ = self.corrupt(clean, generator)
        return clean, corrupted, self.reconstruct_from(corrupted).float().clamp(0, 1)
