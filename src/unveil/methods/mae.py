"""MAE (He et al., 2022): mask most patches, encode the visible ones, rebuild the masked pixels.

The baseline of paper 3 (docs/design.md 4). One view (random-resized crop, scale 0.2-1, and a flip),
per-sample random masking (``corruptions.patch_mask``, 75 % by default), a timm ViT encoder on the
visible patches only, ``_mae.MAEDecoder`` and the normalised-pixel MSE on the masked patches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..views import ViewPipeline, view_preset
from . import DataInfo, register
from ._mae import MaskedImageModel, check_embed, check_ratio, decoder_for, masked_patch_loss, patchify


@register("mae", summary="masked autoencoder: ViT encoder on the visible patches, light decoder, normalised-pixel loss on the masked ones", paper="He et al. 2022 (baseline of paper 3)")
class MAE(MaskedImageModel):
    limits = {"mask_ratio": "(0, 1)", "decoder_dim": ">= 1", "decoder_depth": ">= 1", "decoder_heads": ">= 1"}
    default_recipe = "mae_cifar10"  # `--method mae` alone: a ViT and AdamW, not the ResNet/SGD defaults

    def __init__(self, backbone: nn.Module, data_info: DataInfo, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True, embed: str = "cls",
                 views: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder_for(backbone, decoder_dim, decoder_depth, decoder_heads)
        self.data_info = data_info
        self.mask_ratio = check_ratio(mask_ratio, backbone.num_tokens)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.embed_how = check_embed(embed)
        self.views = ViewPipeline(view_preset("mae", data_info.image_size, mean=tuple(data_info.mean),
                                              std=tuple(data_info.std), **(views or {})))

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x = self.views(images, generator)
        _, pred, mask = self.encode_decode(x, generator)
        loss = masked_patch_loss(pred, patchify(x, self.backbone.patch), mask, self.norm_pix_loss)
        return {"loss": loss}
