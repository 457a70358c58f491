"""BYOL (Grill et al., 2020): an online network predicts an EMA target network's projection.

online = backbone → projector → predictor; target = momentum copy of backbone + projector,
updated after every optimizer step with BYOL's cosine momentum (0.996 → 1). Loss: the normalised
MSE ``2 − 2 cos`` of ``losses.byol``. ``symmetric: true`` (BYOL's choice) *sums* both directions
(view 1 → target of view 2, plus view 2 → target of view 1: BYOL's ``L + L~``, range [0, 8]);
``false`` keeps one direction (view 1's prediction of view 2's target, range [0, 4]).

Each view goes through the online and the target network on its own, so BatchNorm normalises
each view with its own batch statistics, as BYOL's code and lightly's and solo-learn's do (one
joint batch of both views would be a different loss: SimCLR's code concatenates, BYOL's does not).
The two views have their own settings: ``views`` applies to both, ``views_2`` to view 2 only, on
top of the preset's own asymmetry (``byol``: solarization p 0.2 in view 2, ``views.SECOND_VIEW``).
``masking:`` adds MSCN's masks (docs/design.md 3, ``methods._masking``), as for SimCLR; each masked
batch is forwarded alone too.

``fp32_heads`` (default true): under bf16 the backbone runs in bf16 but the projector and predictor (online
and target) in float32. The loss compares cosines near 1, and bf16 heads cost BYOL about 2 kNN points on
the 5,000-image CIFAR-10 parity run (20 epochs, lightly's values: bf16 28.62, fp32 30.59, bf16 with fp32
heads 29.93, lightly fp32 29.68; docs/results.md, issue #17).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..losses.byol import byol_loss
from ..param_groups import decay_all_or_default
from ..views import ViewPipeline, eval_transform, view_pair
from . import DataInfo, register
from ._heads import in_fp32, mlp
from ._masking import (
    branch_views,
    build_masker,
    eval_filter_of,
    input_filter,
    masked_pair,
    mean_over_pairs,
    per_batch,
)
from ._siamese import copy_pairs_, cosine_momentum, ema_update_pairs_, momentum_copy
from .base import Method


@register("byol", summary="online network predicts an EMA target's projection (normalised MSE); optional MSCN masks",
          paper="Grill et al. 2020 (baseline of paper 4)")
class BYOL(Method):
    limits = {"proj_hidden_dim": ">= 1", "proj_dim": ">= 1", "pred_hidden_dim": ">= 1", "base_momentum": "[0, 1]",
              "end_momentum": "[0, 1]"}
    sync_batchnorm = True  # BYOL syncs BN statistics across devices, as in its paper
    def __init__(self, backbone: nn.Module, data_info: DataInfo, proj_hidden_dim: int = 4096, proj_dim: int = 256,
                 pred_hidden_dim: int = 4096, base_momentum: float = 0.996, end_momentum: float = 1.0,
                 symmetric: bool = True, views: dict[str, Any] | None = None, view_preset_name: str = "byol",
                 views_2: dict[str, Any] | None = None, masking: dict[str, Any] | None = None,
                 fp32_heads: bool = True, weight_decay_all: bool = False):
        super().__init__()
        from ..errors import require

        require(0 <= base_momentum <= end_momentum <= 1,
                f"byol: need 0 <= base_momentum <= end_momentum <= 1, got {base_momentum} and {end_momentum}")
        require(isinstance(symmetric, bool), f"byol: symmetric must be true or false, got {symmetric!r}")
        self.backbone = backbone
        self.data_info = data_info
        self.symmetric = symmetric
        self.fp32_heads = bool(fp32_heads)
        self.weight_decay_all = weight_decay_all  # type checked by methods.settings before construction
        self.base_momentum, self.end_momentum = float(base_momentum), float(end_momentum)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, pred_hidden_dim, proj_dim)
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)
        cfg1, cfg2 = view_pair(view_preset_name, data_info.image_size, views, views_2,
                               mean=tuple(data_info.mean), std=tuple(data_info.std))
        self.views, self.views_2 = ViewPipeline(cfg1), ViewPipeline(cfg2)
        self.masker, self.same_view = build_masker(masking)
        self.eval_filter = eval_filter_of(self.masker)
        self._eval_filter_fn = input_filter(self.eval_filter)

    def _target(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._head(self.target_projector, self.target_backbone(x))

    def _predict(self, x: Tensor) -> Tensor:
        return self._head(lambda f: self.predictor(self.projector(f)), self.backbone(x))

    def _head(self, head, features: Tensor) -> Tensor:
        return in_fp32(head, features) if self.fp32_heads else head(features)

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        xa, xb, k = masked_pair((self.views, self.views_2), self.masker, self.same_view, images, generator)
        # one forward per view (and per masked batch): each gets its own BatchNorm batch statistics
        if self.symmetric:
            pa, pb = per_batch(self._predict, xa, k), per_batch(self._predict, xb, k)
            ta, tb = per_batch(self._target, xa, k), per_batch(self._target, xb, k)
            loss = mean_over_pairs(lambda p_a, t_a, p_b, t_b: byol_loss(p_a, t_b) + byol_loss(p_b, t_a),
                                   (pa, ta), (pb, tb), k)
        else:  # one direction: branch A (view 1) online, branch B (view 2) target
            pa, tb = per_batch(self._predict, xa, k), per_batch(self._target, xb, k)
            loss = mean_over_pairs(byol_loss, (pa,), (tb,), k)
        return {"loss": loss}

    def param_groups(self) -> list[dict[str, Any]]:
        """``weight_decay_all``: lightly's CIFAR-10 benchmark decays every parameter (BN and biases too)."""
        return decay_all_or_default(self, self.weight_decay_all)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_momentum(step, total_steps, self.base_momentum, self.end_momentum)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA of the online backbone + projector into the target (parameters; BN statistics are the target's own)."""
        ema_update_pairs_(self.momentum_pairs(), self.momentum_at(step, total_steps))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) module pairs: the target backbone and projector follow the online ones by EMA."""
        return [(self.target_backbone, self.backbone), (self.target_projector, self.projector)]

    @torch.no_grad()
    def reset_targets(self) -> None:
        """The target restarts equal to the online network (after the engine loads init weights)."""
        copy_pairs_(self.momentum_pairs())

    @torch.no_grad()
    def branch_views(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return branch_views((self.views, self.views_2), self.masker, self.same_view, images, generator)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        info = self.data_info
        return self.backbone(self._eval_filter_fn(eval_transform(images, info.image_size, info.mean, info.std)))

    @torch.no_grad()
    def embed_head(self, images: Tensor) -> Tensor:
        """The online projection (not the predictor) of ``embed``'s features: kNN ``features: head`` (paper 5's monitor reads a head)."""
        return self.projector(self.embed(images))
