"""MoCo (He et al. 2020; v2: Chen et al. 2020) as the CIFAR base of paper 5, with Un-Mix / CutMix.

docs/design.md 5.1 (base), 5.2 (Un-Mix), 5.5 (the MoCo / MoCo + CutMix / MoCo + Un-Mix baselines).
Query encoder = backbone + head (``linear``: mix-ssl's fc-as-projection; ``mlp``: MoCo v2's
Linear-ReLU-Linear); key encoder = a momentum copy of both; negatives from a ``KeyQueue``.
With ``mix`` the query view is also mixed with the reversed batch (Un-Mix):
``L(q, k) + lam·L(q_m, k) + (1 − lam)·L(flip(q_m), k)``, every term against the same key and queue.
``symmetric`` adds the other direction with the *same* mixture of view 1 and its lam (Un-Mix's
unmix_c10.py): ``L(q1, k2) + L(q2, k1) + Σ_{k ∈ {k2, k1}} [lam·L(q_m, k) + (1 − lam)·L(flip(q_m), k)]``.

The small functions (views, key forward, settings checks) are in ``_moco.py``, shared with ``mixdet``;
the heads in ``_heads.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..corruptions.mixing import unmix
from ..errors import require
from ..losses.infonce import KeyQueue, fill_from_data, info_nce
from ..param_groups import decay_all_or_default
from . import DataInfo, register
from ._heads import in_fp32, moco_head
from ._moco import (
    check_batch_splits,
    check_embed,
    check_moco_settings,
    check_queue_init,
    embed_features,
    key_embed,
    make_key_encoder,
    moco_views,
)
from ._siamese import copy_pairs_, ema_update_pairs_
from .base import Method

# ---------------------------------------------------------------------------------------------



@register("moco", summary="MoCo (queue of momentum keys, InfoNCE); mix: cutmix or unmix adds Un-Mix's within-batch mixing "
          "(paper 5's base and its MoCo + CutMix / + Un-Mix baselines)", paper="He et al. 2020; Shen et al. 2022 (Un-Mix)")
class MoCo(Method):
    """MoCo with an optional Un-Mix / CutMix mixed-query term (docs/design.md 5.1, 5.2, 5.5)."""
    limits = {"proj_dim": ">= 1", "momentum": "[0, 1]", "queue_size": ">= 1", "temperature": "> 0", "bn_splits": ">= 1",
              "unmix_prob": "[0, 1]", "beta": "> 0"}

    ddp_broadcast_buffers = False  # the queue is gathered from every rank by the queue itself

    def __init__(self, backbone: nn.Module, data_info: DataInfo, head: str = "linear", proj_dim: int = 128,
                 proj_hidden_dim: int | None = None, momentum: float = 0.99, queue_size: int = 4096,
                 temperature: float = 0.1, symmetric: bool = False, bn_splits: int = 8, shuffle_bn: bool = True,
                 mix: str = "none", unmix_prob: float = 0.5, beta: float = 1.0, reverse_term: bool = True,
                 weight_decay_all: bool = True, views: dict[str, Any] | None = None,
                 view_preset_name: str | None = None, embed: str = "backbone", fp32_heads: bool = False,
                 queue_init: str = "data"):
        super().__init__()
        self.embed_from = check_embed(embed)
        self.queue_init = check_queue_init(queue_init)
        check_moco_settings(momentum, queue_size, temperature, bn_splits, shuffle_bn, symmetric)
        require(mix in ("none", "cutmix", "unmix"), f"method.mix must be none, cutmix or unmix, got {mix!r}")
        require(isinstance(unmix_prob, (int, float)) and 0 <= unmix_prob <= 1,
                f"method.unmix_prob must be in [0, 1], got {unmix_prob!r}")
        require(isinstance(beta, (int, float)) and beta > 0, f"method.beta must be > 0, got {beta!r}")
        require(isinstance(reverse_term, bool), f"method.reverse_term must be true or false, got {reverse_term!r}")
        self.backbone, self.data_info = backbone, data_info
        self.head = moco_head(head, backbone.num_features, proj_hidden_dim, proj_dim)
        self.key_backbone, self.key_head = make_key_encoder(backbone, self.head, bn_splits)
        self.queue = KeyQueue(proj_dim, queue_size)
        self.momentum, self.temperature, self.symmetric = float(momentum), float(temperature), symmetric
        self.bn_splits, self.shuffle_bn = bn_splits, shuffle_bn
        # cutmix = Un-Mix with region mixing only (mix-ssl's run_moco.py, docs/design.md 5.5)
        self.mix, self.mix_prob = mix, (float(unmix_prob) if mix == "unmix" else 0.0)
        self.beta, self.reverse_term, self.weight_decay_all = float(beta), reverse_term, weight_decay_all
        self.views = moco_views(data_info, view_preset_name, views)
        self.fp32_heads = bool(fp32_heads)  # heads in float32 under bf16 (as BYOL's; methods/_heads.in_fp32)

    def _inputs(self, images: Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The two views and, with ``mix``, one mixture of view 1 with its reversed batch (one coin,
        lam and box). A symmetric loss uses that one mixture and its lam in both directions, as
        Un-Mix's code (unmix_c10.py mixes ``im_1`` once per step and passes it to both directions)."""
        d: dict[str, Any] = {"query": self.views(images, generator), "key": self.views(images, generator)}
        if self.mix != "none":
            mixed = unmix(d["query"], generator, self.mix_prob, self.beta)
            d["mixed"], d["lam"] = mixed.images, mixed.lam
        return d

    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        check_batch_splits(images.shape[0], self.bn_splits)
        d = self._inputs(images, generator)
        x1, x2, lam = d["query"], d["key"], d.get("lam")
        queue, t = self.queue.keys, self.temperature
        # the mixture is encoded once: Un-Mix's code encodes it again in the second direction, where
        # (train-mode BN, same input) it gives the same q_m
        q_m = self._query(d["mixed"]) if "mixed" in d else None
        loss_orig = loss_mix = images.new_zeros((), dtype=torch.float32)
        keys = []
        for xq, xk in ([(x1, x2), (x2, x1)] if self.symmetric else [(x1, x2)]):
            q = self._query(xq)
            k = key_embed(self.key_backbone, self._key_head, xk, generator, self.shuffle_bn)
            loss_orig = loss_orig + info_nce(q, k, queue, t)
            if q_m is not None:
                loss_mix = loss_mix + lam * info_nce(q_m, k, queue, t)
                if self.reverse_term:  # flip(q_m)[i] encodes mixed[B−1−i], where image i has weight 1 − lam
                    loss_mix = loss_mix + (1 - lam) * info_nce(q_m.flip(0), k, queue, t)
            keys.append(k)
        # symmetric: both views' keys, key(view 1) first, as Un-Mix's / MoCo's CIFAR code (cat([k1, k2]))
        self.queue.enqueue(torch.cat(keys[::-1]))
        out = {"loss": loss_orig + loss_mix, "loss_orig": loss_orig.detach()}
        if lam is not None:
            out["loss_mix"], out["lam"] = loss_mix.detach(), lam.detach()
        return out

    @torch.no_grad()
    def prime(self, batches: Iterator[Tensor], generator: torch.Generator) -> None:
        """``queue_init: data``: the queue starts as keys of one view of the first training batches
        (``losses.infonce.fill_from_data`` says why); ``random``: MoCo's random unit vectors."""
        if self.queue_init == "data":
            fill_from_data(batches, self.queue.size, lambda images: self.queue.enqueue(key_embed(
                self.key_backbone, self._key_head, self.views(images, generator), generator, self.shuffle_bn)))

    def _query(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        return in_fp32(self.head, features) if self.fp32_heads else self.head(features)

    def _key_head(self, features: Tensor) -> Tensor:
        return in_fp32(self.key_head, features) if self.fp32_heads else self.key_head(features)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        # MoCo updates the key encoder at the start of each forward, from the query weights that the
        # previous optimizer step produced. Updating right after that optimizer step gives the same
        # key weights at every forward (the first MoCo update is a no-op: key == query at start;
        # ours after the last step only touches the unexported key encoder), and keeps one update
        # per optimizer step under gradient accumulation.
        ema_update_pairs_(self.momentum_pairs(), self.momentum)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(key, query) module pairs: the key encoder follows the query encoder by EMA."""
        return [(self.key_backbone, self.backbone), (self.key_head, self.head)]

    @torch.no_grad()
    def reset_targets(self) -> None:
        """The key encoder restarts equal to the query encoder (after the engine loads init weights)."""
        copy_pairs_(self.momentum_pairs())

    def param_groups(self) -> list[dict[str, Any]]:
        return decay_all_or_default(self, self.weight_decay_all)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return embed_features(self.backbone, self.head, self.data_info, images, self.embed_from)

    @torch.no_grad()
    def embed_head(self, images: Tensor) -> Tensor:
        """The query head's output whatever ``embed`` says (kNN ``features: head``, paper 5's monitor)."""
        return embed_features(self.backbone, self.head, self.data_info, images, "head")

    @torch.no_grad()
    def branch_views(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """What each branch sees, normalised as the encoder sees it (the preview's rows)."""
        d = self._inputs(images, generator)
        rows = {"view 1 (query)": d["query"], "view 2 (key)": d["key"]}
        if "mixed" in d:
            rows["mixed (query)"] = d["mixed"]
            if self.reverse_term:
                rows["mixed, reversed (query)"] = d["mixed"].flip(0)
        return rows
