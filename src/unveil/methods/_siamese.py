"""Momentum (EMA) targets of the two-branch methods (BYOL, MoCo and the image-mixture methods): a frozen
copy, its EMA update and restart over the (target, online) pairs a method declares once in
``momentum_pairs()``, and BYOL's cosine momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that the optimizer never sees (``requires_grad=False``): the EMA target
    of BYOL and the key encoder of MoCo. It starts equal to the online module."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target ← m·target + (1 − m)·online`` for the parameters only; the target's BatchNorm keeps
    its own running statistics (MoCo's and BYOL's reference code)."""
    t_params = list(target.parameters())
    torch._foreach_lerp_(t_params, [p.detach() for p in online.parameters()], 1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, end: float = 1.0) -> float:
    """BYOL's schedule: ``end − (end − base)·(cos(π·step/total) + 1)/2``, from ``base`` to ``end``."""
    if total_steps <= 0:
        return base
    return end - (end - base) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1) / 2


@torch.no_grad()
def copy_into_(target: nn.Module, online: nn.Module) -> None:
    """``target`` becomes equal to ``online``, parameters and buffers (BN statistics) alike: a momentum
    copy restarting from new online weights, as ``momentum_copy`` makes it at construction."""
    for t, o in zip(target.state_dict().values(), online.state_dict().values(), strict=True):
        t.copy_(o)


@torch.no_grad()
def ema_update_pairs_(pairs: list[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``ema_update_`` over a method's ``momentum_pairs()``: (target, online) pairs declared once."""
    for target, online in pairs:
        ema_update_(target, online, momentum)


@torch.no_grad()
def copy_pairs_(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    """``copy_into_`` over a method's ``momentum_pairs()``: every target restarts equal to its online module."""
    for target, online in pairs:
        copy_into_(target, online)
