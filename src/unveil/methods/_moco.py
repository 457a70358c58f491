"""The MoCo machinery that ``moco`` and ``mixdet`` share (paper 5's CIFAR base, docs/design.md 5.1): views, settings
checks, the key encoder and its forward, parameter groups and evaluation features. Not a method: no
registered method imports another, both import this."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import dist
from ..backbones.split_bn import split_batchnorm
from ..errors import require
from ..views import ViewPipeline, default_preset_for, eval_transform, view_preset
from . import DataInfo
from ._siamese import momentum_copy


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


def check_queue_init(value: object) -> str:
    """``data`` (unveil's default: the queue starts as keys of real images) or ``random`` (MoCo's code)."""
    require(value in ("data", "random"), f"method.queue_init must be data (keys of the first training images) or "
            f"random (MoCo's random unit vectors), got {value!r}")
    return str(value)


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


def embed_features(backbone: nn.Module, head: nn.Module, data_info: DataInfo, images: Tensor, which: str) -> Tensor:
    """Evaluation features under the deterministic evaluation transform: the backbone's pooled
    features (``which="backbone"``, unveil's default for every method) or the query head's output
    (``"head"``: the 128-d vector paper 5's kNN monitor uses, docs/design.md 5.1)."""
    pooled = backbone(eval_transform(images, data_info.image_size, data_info.mean, data_info.std))
    return head(pooled) if which == "head" else pooled


def check_embed(which: object) -> str:
    require(which in ("backbone", "head"), f"method.embed must be backbone or head, got {which!r}")
    return str(which)
