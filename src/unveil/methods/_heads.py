"""The heads the methods share: the BN MLP (SimCLR's projector, BYOL's projector and predictor, MV-MAE's
``mlp2``), MV-MAE's projector choice and MoCo's head (no BatchNorm)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import UserError, require


def mlp(in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = False) -> nn.Sequential:
    """``Linear–BN–ReLU–Linear`` (BYOL's projector and predictor, MV-MAE's ``mlp2``); ``last_bn`` adds a BN
    without affine parameters at the end and drops the last bias (SimCLR's projector)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                               nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim, bias=not last_bn)]
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


PROJECTORS = ("mlp2", "mocov3")


def build_projector(kind: str, in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """``mlp2``: Linear-BN-ReLU-Linear (docs/design.md 4.2); ``mocov3``: MoCo v3's 3 layers, BN at the end."""
    if kind not in PROJECTORS:
        raise UserError(f"method.projector must be one of {', '.join(PROJECTORS)}, got {kind!r}")
    if kind == "mlp2":
        return mlp(in_dim, hidden, out)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                               nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                               nn.Linear(hidden, out, bias=False), nn.BatchNorm1d(out, affine=False)]
    return nn.Sequential(*layers)


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


def in_fp32(head: Callable[[Tensor], Tensor], features: Tensor) -> Tensor:
    """``head(features)`` in float32 even under bf16 autocast: the backbone keeps bf16's speed while the small
    heads, whose outputs a cosine loss compares near 1, keep fp32's resolution (bf16 has 8 mantissa bits)."""
    with torch.autocast(features.device.type, enabled=False):
        return head(features.float())
