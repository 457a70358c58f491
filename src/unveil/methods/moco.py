"""MoCo (He et al. 2020; v2: Chen et al. 2020) as the CIFAR base of paper 5, with Un-Mix / CutMix.

methods.md 5.1 (base), 5.2 (Un-Mix), 5.5 (the MoCo / MoCo + CutMix / MoCo + Un-Mix baselines).
Query encoder = backbone + head (``linear``: mix-ssl's fc-as-projection; ``mlp``: MoCo v2's
Linear-ReLU-Linear); key encoder = a momentum copy of both; negatives from a ``KeyQueue``.
With ``mix`` the query view is also mixed with the reversed batch (Un-Mix):
``L(q, k) + lam·L(q_m, k) + (1 − lam)·L(flip(q_m), k)``, every term against the same key and queue.
``symmetric`` adds the other direction with the *same* mixture of view 1 and its lam (Un-Mix's
unmix_c10.py): ``L(q1, k2) + L(q2, k1) + Σ_{k ∈ {k2, k1}} [lam·L(q_m, k) + (1 − lam)·L(flip(q_m), k)]``.

The small functions here (head, views, key forward, momentum update, settings checks) are also
what ``mixdet`` builds on: no base class, just imports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import dist
from ..backbones.split_bn import split_batchnorm
from ..corruptions.mixing import unmix
from ..errors import require
from ..losses.infonce import KeyQueue, info_nce
from ..param_groups import default_param_groups
from ..views import ViewPipeline, default_preset_for, eval_transform, view_preset
from . import DataInfo, register
from ._common import reject_unknown_settings
from ._siamese import copy_into_, ema_update_, momentum_copy

# ---------------------------------------------------------------------------------------------
# Shared by moco and mixdet


def moco_head(kind: str, in_dim: int, hidden_dim: int | None, out_dim: int) -> nn.Module:
    """``linear``: one Linear (the CIFAR code's fc *is* the projection); ``mlp``: MoCo v2's
    Linear-ReLU-Linear (no BatchNorm, as main_moco.py --mlp). ``hidden_dim=None`` is the encoder's
    width, as MoCo v2's code (moco/builder.py: ``dim_mlp = fc.weight.shape[1]``, 512 for ResNet-18)."""
    require(kind in ("linear", "mlp"), f"method.head must be linear or mlp, got {kind!r}")
    require(hidden_dim is None or (isinstance(hidden_dim, int) and not isinstance(hidden_dim, bool) and hidden_dim >= 1),
            f"method.proj_hidden_dim must be a positive integer or null (the encoder's width), got {hidden_dim!r}")
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    hidden = in_dim if hidden_dim is None else hidden_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def moco_views(data_info: DataInfo, preset: str | None, views: dict[str, Any] | None) -> ViewPipeline:
    """Two-view augmentation: the ``cifar`` preset on small images (mix-ssl's CIFAR pipeline except
    the bicubic resize, which the batched crop does not offer: bilinear, as Un-Mix's demo)."""
    overrides = {"mean": tuple(data_info.mean), "std": tuple(data_info.std), **(views or {})}
    return ViewPipeline(view_preset(preset or default_preset_for(data_info.name), data_info.image_size, **overrides))


def check_moco_settings(momentum: float, queue_size: int, temperature: float, bn_splits: int,
                        shuffle_bn: bool, symmetric: bool) -> None:
    """One line per bad MoCo base setting (a recipe typo must not become a stack trace)."""
    require(isinstance(momentum, (int, float)) and 0 <= momentum <= 1, f"method.momentum must be in [0, 1], got {momentum!r}")
    require(isinstance(queue_size, int) and not isinstance(queue_size, bool) and queue_size >= 1,
            f"method.queue_size must be a positive integer, got {queue_size!r}")
    require(isinstance(temperature, (int, float)) and temperature > 0, f"method.temperature must be > 0, got {temperature!r}")
    require(isinstance(bn_splits, int) and not isinstance(bn_splits, bool) and bn_splits >= 1,
            f"method.bn_splits must be a positive integer (1 = plain BatchNorm), got {bn_splits!r}")
    require(isinstance(shuffle_bn, bool), f"method.shuffle_bn must be true or false, got {shuffle_bn!r}")
    require(isinstance(symmetric, bool), f"method.symmetric must be true or false, got {symmetric!r}")


def check_batch_splits(batch: int, bn_splits: int) -> None:
    """Split BatchNorm needs the per-process batch to divide into its splits: say so in one line
    (SplitBatchNorm's own error would surface as a stack trace from inside the backbone)."""
    require(batch % bn_splits == 0, f"batch of {batch} images per process is not a multiple of method.bn_splits="
            f"{bn_splits}: set train.batch_size to a multiple of {bn_splits}, or method.bn_splits=1 (plain BatchNorm)")
    require(batch // bn_splits >= 2, f"batch of {batch} images per process in method.bn_splits={bn_splits} leaves "
            f"{batch // bn_splits} image per BatchNorm split (its statistics need 2 or more): raise train.batch_size "
            f"to {2 * bn_splits} or more, or lower method.bn_splits")


def make_key_encoder(backbone: nn.Module, head: nn.Module, bn_splits: int) -> tuple[nn.Module, nn.Module]:
    """Put split BatchNorm in the query backbone (in place), then copy backbone and head as the
    frozen key encoder (equal at start, as MoCo's ``param_k.data.copy_(param_q.data)``)."""
    split_batchnorm(backbone, bn_splits)
    return momentum_copy(backbone), momentum_copy(head)


@torch.no_grad()
def key_embed(key_backbone: nn.Module, key_head: nn.Module, x: Tensor, generator: torch.Generator,
              shuffle: bool) -> Tensor:
    """Key encoder output for ``x`` (no gradient); with ``shuffle`` the batch is permuted (over all
    ranks) before the encoder and put back after, so BatchNorm statistics of a key are not those
    of its query (MoCo's shuffle-BN; on one process it matters with split BatchNorm)."""
    if not shuffle:
        return key_head(key_backbone(x))
    shuffled, unshuffle = dist.shuffle_batch(x, generator)
    return dist.unshuffle_batch(key_head(key_backbone(shuffled)), unshuffle)


def moco_param_groups(module: nn.Module, weight_decay_all: bool) -> list[dict[str, Any]]:
    """``weight_decay_all``: one group, weight decay on every trainable parameter (the MoCo / mix-ssl
    code passes ``model.parameters()`` to SGD with weight_decay; BN and biases included); else the
    library's default groups (norms, biases exempt)."""
    if not weight_decay_all:
        return default_param_groups(module)
    return [{"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": True, "name": "all"}]


def embed_features(backbone: nn.Module, head: nn.Module, data_info: DataInfo, images: Tensor, which: str) -> Tensor:
    """Evaluation features under the deterministic evaluation transform: the backbone's pooled
    features (``which="backbone"``, unveil's default for every method) or the query head's output
    (``"head"``: the 128-d vector paper 5's kNN monitor uses, methods.md 5.1)."""
    pooled = backbone(eval_transform(images, data_info.image_size, data_info.mean, data_info.std))
    return head(pooled) if which == "head" else pooled


def check_embed(which: object) -> str:
    require(which in ("backbone", "head"), f"method.embed must be backbone or head, got {which!r}")
    return str(which)


# ---------------------------------------------------------------------------------------------

_MOCO_KNOWN = ("head, embed, proj_dim, proj_hidden_dim, momentum, queue_size, temperature, symmetric, bn_splits, "
               "shuffle_bn, mix, unmix_prob, beta, reverse_term, weight_decay_all, views, view_preset_name")


@register("moco", summary="MoCo (queue of momentum keys, InfoNCE); mix: cutmix or unmix adds Un-Mix's within-batch mixing "
          "(paper 5's base and its MoCo + CutMix / + Un-Mix baselines)", paper="He et al. 2020; Shen et al. 2022 (Un-Mix)")
class MoCo(nn.Module):
    """MoCo with an optional Un-Mix / CutMix mixed-query term (methods.md 5.1, 5.2, 5.5)."""

    ddp_broadcast_buffers = False  # the queue is gathered from every rank by the queue itself

    def __init__(self, backbone: nn.Module, data_info: DataInfo, head: str = "linear", proj_dim: int = 128,
                 proj_hidden_dim: int | None = None, momentum: float = 0.99, queue_size: int = 4096,
                 temperature: float = 0.1, symmetric: bool = False, bn_splits: int = 8, shuffle_bn: bool = True,
                 mix: str = "none", unmix_prob: float = 0.5, beta: float = 1.0, reverse_term: bool = True,
                 weight_decay_all: bool = True, views: dict[str, Any] | None = None,
                 view_preset_name: str | None = None, embed: str = "backbone", **unknown: Any):
        super().__init__()
        reject_unknown_settings(unknown, "moco", _MOCO_KNOWN)
        self.embed_from = check_embed(embed)
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
        # cutmix = Un-Mix with region mixing only (mix-ssl's run_moco.py, methods.md 5.5)
        self.mix, self.mix_prob = mix, (float(unmix_prob) if mix == "unmix" else 0.0)
        self.beta, self.reverse_term, self.weight_decay_all = float(beta), reverse_term, weight_decay_all
        self.views = moco_views(data_info, view_preset_name, views)

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
        q_m = self.head(self.backbone(d["mixed"])) if "mixed" in d else None
        loss_orig = loss_mix = images.new_zeros((), dtype=torch.float32)
        keys = []
        for xq, xk in ([(x1, x2), (x2, x1)] if self.symmetric else [(x1, x2)]):
            q = self.head(self.backbone(xq))
            k = key_embed(self.key_backbone, self.key_head, xk, generator, self.shuffle_bn)
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
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        # MoCo updates the key encoder at the start of each forward, from the query weights that the
        # previous optimizer step produced. Updating right after that optimizer step gives the same
        # key weights at every forward (the first MoCo update is a no-op: key == query at start;
        # ours after the last step only touches the unexported key encoder), and keeps one update
        # per optimizer step under gradient accumulation.
        ema_update_(self.key_backbone, self.backbone, self.momentum)
        ema_update_(self.key_head, self.head, self.momentum)

    @torch.no_grad()
    def reset_targets(self) -> None:
        """The key encoder restarts equal to the query encoder (after the engine loads init weights)."""
        copy_into_(self.key_backbone, self.backbone)
        copy_into_(self.key_head, self.head)

    def param_groups(self) -> list[dict[str, Any]]:
        return moco_param_groups(self, self.weight_decay_all)

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
