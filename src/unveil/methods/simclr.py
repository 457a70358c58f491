"""SimCLR (Chen et al., 2020): two augmented views, a projection MLP, NT-Xent.

The foundation's reference method. Both views go through the encoder as ONE batch, as SimCLR's
own code does (its BatchNorm statistics span both views; lightly's examples forward each view
alone, BYOL here does too). ``masking:`` turns it into MSCN-SimCLR (docs/design.md 3,
``methods._masking``): branch-A masks on view 1, branch-B masks on view 2, NT-Xent averaged over
the num_masks × num_masks cross-view pairs; a training high-pass is applied in ``embed`` too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..losses.ntxent import nt_xent
from ..views import ViewPipeline, default_preset_for, eval_transform, view_preset
from . import DataInfo, register
from ._heads import mlp
from ._masking import branch_views, build_masker, eval_filter_of, input_filter, masked_pair, mean_over_pairs
from .base import Method


@register("simclr", summary="two augmented views, projection MLP, NT-Xent (the contrastive baseline of papers 4 and 5)", paper="Chen et al. 2020 (baseline)")
class SimCLR(Method):
    limits = {"temperature": "> 0", "proj_hidden_dim": ">= 1", "proj_dim": ">= 1"}
    sync_batchnorm = True  # the projector's BN sees the global batch on several GPUs, as in the paper
    def __init__(self, backbone: nn.Module, data_info: DataInfo, temperature: float = 0.5,
                 proj_hidden_dim: int = 2048, proj_dim: int = 128, views: dict[str, Any] | None = None,
                 view_preset_name: str | None = None, masking: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.data_info = data_info
        self.temperature = temperature
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim, last_bn=True)
        preset = view_preset_name or default_preset_for(data_info.name)
        self.views = ViewPipeline(view_preset(preset, data_info.image_size, mean=tuple(data_info.mean),
                                              std=tuple(data_info.std), **(views or {})))
        self.masker, self.same_view = build_masker(masking)
        self.eval_filter = eval_filter_of(self.masker)  # the training high-pass, applied in embed too
        self._eval_filter_fn = input_filter(self.eval_filter)

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        xa, xb, k = masked_pair(self.views, self.masker, self.same_view, images, generator)
        z = self.projector(self.backbone(torch.cat([xa, xb])))  # the encoder runs once per (masked) input
        za, zb = z.chunk(2)
        return {"loss": mean_over_pairs(lambda z1, z2: nt_xent(z1, z2, self.temperature), (za,), (zb,), k)}

    @torch.no_grad()
    def branch_views(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return branch_views(self.views, self.masker, self.same_view, images, generator)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        info = self.data_info
        return self.backbone(self._eval_filter_fn(eval_transform(images, info.image_size, info.mean, info.std)))

    @torch.no_grad()
    def embed_head(self, images: Tensor) -> Tensor:
        """The 128-d projection of ``embed``'s features: kNN ``features: head`` (paper 5's monitor reads a head)."""
        return self.projector(self.embed(images))
