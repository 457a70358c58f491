"""Multi-view masked autoencoder (Ji, Han, Rhee 2023; paper 3, docs/design.md 4.2).

Two random-resized crops of each image, each masked independently (80 % by default), one shared
ViT encoder on the visible patches, MAE's decoder per view; each view rebuilds its own pixels
(``two_targets``), and a projector on each view's class token (or mean of its visible tokens)
feeds a symmetric NT-Xent between the two views (τ 0.2), weighted 2.0:

    L = ½ (L_rec(v1) + L_rec(v2)) + λ · L_con

Ablations of the paper: ``contrastive_weight: 0`` (without the contrastive loss; the projector is
then not built), ``two_targets: false`` (both views rebuild view 1's pixels at their positions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..corruptions.patch_mask import random_token_masking
from ..errors import UserError
from ..losses.ntxent import nt_xent
from ..views import ViewPipeline, view_preset
from . import DataInfo, register
from ._heads import build_projector
from ._mae import MaskedImageModel, check_embed, check_ratio, decoder_for, masked_patch_loss, patchify, pooled


@register("mvmae", summary="multi-view masked autoencoder: two masked crops, each rebuilt by MAE's decoder, plus NT-Xent between their class tokens", paper="3 Multi-view masked AE (Ji et al. 2023)")
class MVMAE(MaskedImageModel):
    limits = {"mask_ratio": "(0, 1)", "decoder_dim": ">= 1", "decoder_depth": ">= 1", "decoder_heads": ">= 1",
              "contrastive_weight": ">= 0", "temperature": "> 0", "proj_hidden_dim": ">= 1", "proj_dim": ">= 1"}
    sync_batchnorm = True  # the contrastive projector's BN, over the global batch
    default_recipe = "mvmae_cifar10"  # `--method mvmae` alone: a ViT and AdamW, not the ResNet/SGD defaults

    def __init__(self, backbone: nn.Module, data_info: DataInfo, mask_ratio: float = 0.8, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True,
                 contrastive_weight: float = 2.0, temperature: float = 0.2, contrastive_feature: str = "cls",
                 projector: str = "mlp2", proj_hidden_dim: int = 2048, proj_dim: int = 256,
                 two_targets: bool = True, embed: str = "cls", views: dict[str, Any] | None = None):
        super().__init__()
        if isinstance(contrastive_weight, bool) or not isinstance(contrastive_weight, (int, float)) or contrastive_weight < 0:
            raise UserError(f"method.contrastive_weight must be a number >= 0, got {contrastive_weight!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise UserError(f"method.temperature must be a number > 0, got {temperature!r}")
        self.backbone = backbone
        self.decoder = decoder_for(backbone, decoder_dim, decoder_depth, decoder_heads)
        self.data_info = data_info
        self.mask_ratio = check_ratio(mask_ratio, backbone.num_tokens)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.contrastive_weight = float(contrastive_weight)
        self.temperature = float(temperature)
        self.contrastive_feature = check_embed(contrastive_feature)
        self.two_targets = bool(two_targets)
        self.embed_how = check_embed(embed)
        # without the contrastive term the projector would get no gradient: not built at all
        self.projector = (build_projector(projector, backbone.num_features, proj_hidden_dim, proj_dim)
                          if self.contrastive_weight > 0 else None)
        self.views = ViewPipeline(view_preset("mae", data_info.image_size, mean=tuple(data_info.mean),
                                              std=tuple(data_info.std), **(views or {})))

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        x1, x2 = self.views(images, generator), self.views(images, generator)
        x = torch.cat([x1, x2])
        b = x1.shape[0]
        # independent masks per view, one encoder pass over both views' visible patches
        tokens, pred, mask = self.encode_decode(x, generator)
        patch = self.backbone.patch
        target = patchify(x, patch) if self.two_targets else patchify(x1, patch).repeat(2, 1, 1)
        rec1 = masked_patch_loss(pred[:b], target[:b], mask[:b], self.norm_pix_loss)
        rec2 = masked_patch_loss(pred[b:], target[b:], mask[b:], self.norm_pix_loss)
        out = {"rec_loss": 0.5 * (rec1 + rec2)}
        if self.projector is not None:
            z = self.projector(pooled(tokens, self.contrastive_feature))
            out["con_loss"] = nt_xent(z[:b], z[b:], self.temperature)
            out["loss"] = out["rec_loss"] + self.contrastive_weight * out["con_loss"]
        else:
            out["loss"] = out["rec_loss"]
        return out

    @torch.no_grad()
    def branch_views(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The two normalised crops, each with its masked patches at 0 (the mean colour): ``unveil preview``."""
        rows = {}
        g, p = self.backbone.grid, self.backbone.patch
        for name in ("view 1 masked", "view 2 masked"):
            x = self.views(images, generator)
            m = random_token_masking(x.shape[0], g * g, self.mask_ratio, generator, x.device)
            keep = (1 - m.mask).view(-1, 1, g, g).repeat_interleave(p, 2).repeat_interleave(p, 3)
            rows[name] = x * keep.to(x.dtype)
        return rows
