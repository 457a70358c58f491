"""MixDet (Lam 2022, "Leveraging Image Mixtures for Unsupervised Detection Pre-training"): MoCo
with CutMix mixtures whose inside-box and outside-box regions are also contrasted as local and
global crops, pooled from the last feature map (docs/design.md 5.3 and 5.4).

``approach: 2`` (default; the official mix-ssl code): each view gets a box pasted from its own
reversed batch; ``approach: 1`` (paper §3.2.1, no code): one box swapped between the two views of
the same image, three queues. The MoCo base (head, key encoder, queue, split/shuffle BN, views)
comes from ``moco``'s functions.

Approach 2's loss is the paper's Eq. 8 as the official code computes it: the reverse terms are the
queries of the reversed mixture ``flip(mixed1)`` against the *unchanged* keys ``k`` and ``k_local``.
Those queries are taken as ``flip`` of the forward ones instead of a third query forward: with
plain BatchNorm, or split BatchNorm with the batch a multiple of the splits (``check_batch_splits``;
the reversal then maps each split onto a split, as for the code's interleaved splits), the
train-mode encoder is equivariant to reversing the batch, so
the forward of ``flip(mixed1)`` *is* the flip of the forward of ``mixed1`` (tests/methods/test_mixdet.py
checks it). The former ``pairing: semantic`` (reverse G/L terms against ``flip(k)``, ``flip(k_local)``)
was removed: by that equivariance its reverse G/L terms equalled the forward ones exactly.

Local/global pooling (``crop_and_upsample`` in models/detmix.py): a 1x1 conv (C -> proj_dim, with
bias) on the backbone's last map, bilinear upsampling to the image size, the mean inside the box
(local) and the mean outside it (global), each L2-normalised. The key side reuses the query's conv
under no_grad (``key_projection: shared``, as the code) or an EMA copy of it (``ema``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..corruptions.mixing import (
    box_masks,
    cutmix_box,
    mix_between_branches,
    mix_within_batch,
    paste,
    sample_lam,
)
from ..errors import require
from ..losses.infonce import KeyQueue, fill_from_data, info_nce
from ..param_groups import decay_all_or_default
from . import DataInfo, register
from ._heads import moco_head
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
from ._siamese import copy_pairs_, ema_update_pairs_, momentum_copy
from .base import Method


def box_pool(proj_map: Tensor, box: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(local, global) L2-normalised vectors of ``proj_map`` (B, D, h, w) upsampled (bilinear) to
    ``size``: the mean inside ``box`` and the mean outside it. An empty side (a box covering the
    whole image) gives a zero vector instead of the code's 0/0."""
    up = F.interpolate(proj_map, size=size, mode="bilinear", align_corners=False)
    inside, outside = (m.to(up.dtype) for m in box_masks(box, size[0], size[1], device=up.device))
    local = (up * inside).sum(dim=(2, 3)) / inside.sum().clamp(min=1)
    glob = (up * outside).sum(dim=(2, 3)) / outside.sum().clamp(min=1)
    return F.normalize(local, dim=1), F.normalize(glob, dim=1)


def check_pairing(pairing: object, approach: int) -> None:
    """``pairing`` is kept only so run configs that say ``code`` (Eq. 8, the only loss now) still load."""
    require(pairing != "semantic",
            "method.pairing=semantic was removed: with (split) BatchNorm the encoder is equivariant to reversing the "
            "batch, so its reverse global/local terms equalled the forward ones (the lam weighting vanished); "
            "MixDet Approach 2 now always computes the paper's Eq. 8 as the official code: drop method.pairing")
    require(pairing in (None, "code"), f"method.pairing must be code (Eq. 8, the default) or left out, got {pairing!r}")
    require(pairing is None or approach == 2,
            "method.pairing is an Approach-2 setting (Approach 1 mixes only image i's own views): drop it")




@register("mixdet", summary="MoCo + CutMix mixtures whose in-box / out-of-box regions are contrasted as local / global "
          "crops (approach 2: within-batch, the official code; approach 1: between the two views)",
          paper="Lam 2022 (MixDet)")
class MixDet(Method):
    """MixDet Approach 2 (within the mini-batch) or Approach 1 (between branches), docs/design.md 5.3-5.4."""
    limits = {"approach": "[1, 2]", "proj_dim": ">= 1", "momentum": "[0, 1]", "queue_size": ">= 1", "temperature": "> 0",
              "bn_splits": ">= 1", "beta": "> 0"}

    ddp_broadcast_buffers = False  # the queues are gathered from every rank by the queues themselves

    def __init__(self, backbone: nn.Module, data_info: DataInfo, approach: int = 2, pairing: str | None = None,
                 independent_boxes: bool = False, lam: str | float = "area", key_projection: str = "shared",
                 head: str = "linear", proj_dim: int = 128, proj_hidden_dim: int | None = None, momentum: float = 0.99,
                 queue_size: int = 4096, temperature: float = 0.1, bn_splits: int = 8, shuffle_bn: bool = True,
                 beta: float = 1.0, weight_decay_all: bool = True, views: dict[str, Any] | None = None,
                 view_preset_name: str | None = None, embed: str = "backbone", queue_init: str = "data"):
        super().__init__()
        self.embed_from = check_embed(embed)
        self.queue_init = check_queue_init(queue_init)
        check_moco_settings(momentum, queue_size, temperature, bn_splits, shuffle_bn, False)
        require(approach in (1, 2) and not isinstance(approach, bool), f"method.approach must be 1 or 2, got {approach!r}")
        check_pairing(pairing, approach)
        require(isinstance(independent_boxes, bool), f"method.independent_boxes must be true or false, got {independent_boxes!r}")
        require(lam == "area" or (isinstance(lam, (int, float)) and not isinstance(lam, bool) and 0 <= lam <= 1),
                f"method.lam must be 'area' (the CutMix area ratio) or a number in [0, 1], got {lam!r}")
        require(key_projection in ("shared", "ema"), f"method.key_projection must be shared or ema, got {key_projection!r}")
        require(isinstance(beta, (int, float)) and beta > 0, f"method.beta must be > 0, got {beta!r}")
        require(approach == 1 or (not independent_boxes and lam == "area"),
                "method.independent_boxes and a fixed method.lam are Approach-1 settings (method.approach=1); "
                "Approach 2 always uses independent boxes and the area ratio, as the code")
        self.backbone, self.data_info = backbone, data_info
        self.approach, self.independent_boxes, self.lam_setting = approach, independent_boxes, lam
        self.head = moco_head(head, backbone.num_features, proj_hidden_dim, proj_dim)
        self.proj = nn.Conv2d(backbone.num_features, proj_dim, kernel_size=1, bias=True)
        self.key_backbone, self.key_head = make_key_encoder(backbone, self.head, bn_splits)
        self.key_proj = momentum_copy(self.proj) if key_projection == "ema" else None
        self.queue = KeyQueue(proj_dim, queue_size)  # original keys (also the global queue of Approach 2)
        self.local_queue = KeyQueue(proj_dim, queue_size)
        self.global_queue = KeyQueue(proj_dim, queue_size) if approach == 1 else None
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.bn_splits, self.shuffle_bn, self.beta, self.weight_decay_all = bn_splits, shuffle_bn, float(beta), weight_decay_all
        self.views = moco_views(data_info, view_preset_name, views)

    # -- inputs ----------------------------------------------------------------------------------
    def _inputs(self, images: Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The two views, the mixtures each branch encodes, the boxes and the loss weight lam."""
        x1, x2 = self.views(images, generator), self.views(images, generator)
        if self.approach == 2:
            m = mix_within_batch(x1, x2, generator, self.beta)
            return {"x1": x1, "x2": x2, "q_mixed": m.mixed1, "k_mixed": m.mixed2, "box_q": m.box1, "box_k": m.box2,
                    "lam": m.lam1}
        if self.independent_boxes:  # same cut size, independent places; each mixture still only image i
            h, w = x1.shape[-2:]
            cut = sample_lam(self.beta, generator)
            box_q, lam = cutmix_box(h, w, cut, generator, nonempty=True)
            box_k, _ = cutmix_box(h, w, cut, generator, nonempty=True)
            q_mixed, k_mixed = paste(x1, x2, box_q), paste(x2, x1, box_k)
        else:
            m = mix_between_branches(x1, x2, generator, self.beta)
            q_mixed, k_mixed, box_q, box_k, lam = m.x1, m.x2, m.box, m.box, m.lam
        if self.lam_setting != "area":
            lam = torch.tensor(float(self.lam_setting), device=x1.device)
        return {"x1": x1, "x2": x2, "q_mixed": q_mixed, "k_mixed": k_mixed, "box_q": box_q, "box_k": box_k, "lam": lam}

    # -- encoders --------------------------------------------------------------------------------
    def _query_mixed(self, x: Tensor, box: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q_m, local, global) of a mixed query image: head on the pooled features, box pooling
        of the projected last map."""
        pooled, fmap = self.backbone(x, return_map=True)
        local, glob = box_pool(self.proj(fmap), box, tuple(x.shape[-2:]))
        return self.head(pooled), local, glob

    @torch.no_grad()
    def _key_local_global(self, x: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
        """(local, global) of a mixed key image: key backbone map (no shuffle, as the code), then the
        query's conv (shared, no gradient) or its EMA copy."""
        _, fmap = self.key_backbone(x, return_map=True)
        proj = self.key_proj(fmap) if self.key_proj is not None else F.conv2d(fmap, self.proj.weight, self.proj.bias)
        return box_pool(proj, box, tuple(x.shape[-2:]))

    @torch.no_grad()
    def prime(self, batches: Iterator[Tensor], generator: torch.Generator) -> None:
        """``queue_init: data``: every queue starts as the keys the training step would enqueue for the first
        batches (``losses.infonce.fill_from_data`` says why); ``random``: the code's random unit vectors."""
        if self.queue_init != "data":
            return

        def enqueue(images: Tensor) -> int:
            d = self._inputs(images, generator)
            k_local, k_global = self._key_local_global(d["k_mixed"], d["box_k"])
            self.local_queue.enqueue(k_local)
            if self.global_queue is not None:
                self.global_queue.enqueue(k_global)
            return self.queue.enqueue(key_embed(self.key_backbone, self.key_head, d["x2"], generator, self.shuffle_bn))

        fill_from_data(batches, self.queue.size, enqueue)

    # -- training step ---------------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        check_batch_splits(images.shape[0], self.bn_splits)
        d = self._inputs(images, generator)
        lam = d["lam"]
        q = self.head(self.backbone(d["x1"]))
        k = key_embed(self.key_backbone, self.key_head, d["x2"], generator, self.shuffle_bn)
        k_local, k_global = self._key_local_global(d["k_mixed"], d["box_k"])
        q_m, q_local, q_global = self._query_mixed(d["q_mixed"], d["box_q"])
        t = self.temperature
        queue, local_queue = self.queue.keys, self.local_queue.keys
        loss_orig = info_nce(q, k, queue, t)
        loss_m = info_nce(q_m, k, queue, t)
        loss_ll = info_nce(q_local, k_local, local_queue, t)
        out: dict[str, Tensor] = {}
        if self.approach == 2:
            # Approach 2 (5.3, Eq. 8 as the official code): every query term against the original queue
            # except L<->L. The (1 − lam) terms are the queries of the reversed mixture flip(mixed1)
            # against the same k and k_local; that mixture's queries are the flips of mixed1's (the
            # encoder is equivariant to reversing the batch: module docstring), so no third forward.
            q_mr, q_local_r, q_global_r = q_m.flip(0), q_local.flip(0), q_global.flip(0)
            loss_gg = info_nce(q_global, k, queue, t)
            rev = (info_nce(q_mr, k, queue, t) + info_nce(q_global_r, k, queue, t)
                   + info_nce(q_local_r, k_local, local_queue, t))
            loss_mix = lam * (loss_m + loss_gg + loss_ll) + (1 - lam) * rev
        else:
            # Approach 1 (5.4, Eq. 7 with G<->G as the third term): three queues
            global_queue = self.global_queue.keys
            loss_gg = info_nce(q_global, k_global, global_queue, t)
            loss_lg = info_nce(q_local, k_global, global_queue, t)
            loss_mix = lam * loss_m + (1 - lam) * (loss_lg + loss_ll + loss_gg)
            out["loss_lg"] = loss_lg.detach()
            self.global_queue.enqueue(k_global)
        self.queue.enqueue(k)
        self.local_queue.enqueue(k_local)
        out.update(loss=loss_orig + loss_mix, loss_orig=loss_orig.detach(), loss_mixed=loss_m.detach(),
                   loss_gg=loss_gg.detach(), loss_ll=loss_ll.detach(), lam=lam.detach().float())
        return out

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        # as moco.MoCo.after_optimizer_step: equals the code's EMA update before each forward
        ema_update_pairs_(self.momentum_pairs(), self.momentum)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(key, query) module pairs; the local projection too when the keys use its EMA copy."""
        pairs = [(self.key_backbone, self.backbone), (self.key_head, self.head)]
        return pairs + ([(self.key_proj, self.proj)] if self.key_proj is not None else [])

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
        rows = {"view 1 (query)": d["x1"], "view 2 (key)": d["x2"]}
        if self.approach == 2:
            rows["view 1 + box from reversed batch (query)"] = d["q_mixed"]
            rows["same, batch reversed (query)"] = d["q_mixed"].flip(0)
            rows["view 2 + box from reversed batch (key)"] = d["k_mixed"]
        else:
            rows["view 1 + box of view 2 (query)"] = d["q_mixed"]
            rows["view 2 + box of view 1 (key)"] = d["k_mixed"]
        return rows
