"""MAE (He et al., 2022): mask most patches, encode the visible ones, rebuild the masked pixels.

The baseline of paper 3 (methods.md 4). One view (random-resized crop, scale 0.2-1, and a flip),
per-sample random masking (``corruptions.patch_mask``, 75 % by default), a timm ViT encoder on the
visible patches only, ``_mae.MAEDecoder`` and the normalised-pixel MSE on the masked patches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..corruptions.patch_mask import random_token_masking
from ..param_groups import default_param_groups
from ..views import ViewPipeline, eval_transform, view_preset
from . import DataInfo, register
from ._mae import check_ratio, decoder_for, masked_patch_loss, patchify, reconstruction_rows

EMBEDS = ("cls", "mean")


def check_embed(embed: str) -> str:
    from ..errors import UserError

    if embed not in EMBEDS:
        raise UserError(f"method.embed must be one of {', '.join(EMBEDS)}, got {embed!r}")
    return embed


def pooled(tokens: Tensor, how: str) -> Tensor:
    """The class token, or the mean of the patch tokens (MAE's ``global_pool``)."""
    return tokens[:, 0] if how == "cls" else tokens[:, 1:].mean(1)


@register("mae", summary="masked autoencoder: ViT encoder on the visible patches, light decoder, normalised-pixel loss on the masked ones", paper="He et al. 2022 (baseline of paper 3)")
class MAE(nn.Module):
    normalized_inputs = True
    default_recipe = "mae_cifar10"  # `--method mae` alone: a ViT and AdamW, not the ResNet/SGD defaults

    def __init__(self, backbone: nn.Module, data_info: DataInfo, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True, embed: str = "cls",
                 views: dict[str, Any] | None = None, **unused: Any):
        super().__init__()
        if unused:
            raise TypeError(f"unknown mae settings: {', '.join(unused)}")
        self.backbone = backbone
        self.decoder = decoder_for(backbone, decoder_dim, decoder_depth, decoder_heads)
        self.data_info = data_info
        self.mask_ratio = check_ratio(mask_ratio, backbone.num_tokens)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.embed_how = check_embed(embed)
        self.views = ViewPipeline(view_preset("mae", data_info.image_size, mean=tuple(data_info.mean),
                                              std=tuple(data_info.std), **(views or {})))

    def param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on weights only: not on biases, norms, the class/mask tokens or positions."""
        return default_param_groups(self)

    def encode_decode(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(encoder tokens, predicted patches, mask) for a normalised batch ``x``."""
        m = random_token_masking(x.shape[0], self.backbone.num_tokens, self.mask_ratio, generator, x.device)
        tokens = self.backbone.forward_tokens(x, m.ids_keep)
        return tokens, self.decoder(tokens, m.ids_restore), m.mask

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x = self.views(images, generator)
        _, pred, mask = self.encode_decode(x, generator)
        loss = masked_patch_loss(pred, patchify(x, self.backbone.patch), mask, self.norm_pix_loss)
        return {"loss": loss}

    def _eval_input(self, images: Tensor) -> Tensor:
        info = self.data_info
        return eval_transform(images, info.image_size, info.mean, info.std)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return pooled(self.backbone.forward_tokens(self._eval_input(images)), self.embed_how)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Rows for ``unveil reconstruct``: masked input | reconstruction | original."""
        x = self._eval_input(images)
        _, pred, mask = self.encode_decode(x, generator)
        info = self.data_info
        return reconstruction_rows(x, pred, mask, self.backbone.patch, self.norm_pix_loss, info.mean, info.std)
