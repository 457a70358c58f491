"""Optimizers (SGD, LARS, AdamW, Adam) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import require
from .param_groups import default_param_groups, no_weight_decay_names  # noqa: F401 (re-exported)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Parameter groups with ``lars=False`` (biases, norm layers: the groups excluded from weight
    decay) skip both the trust ratio and weight decay, as in SimCLR/BYOL/Barlow Twins.
    A layer's rate is ``lr · η‖w‖ / ‖g + wd·w‖`` (η = ``trust_coefficient``; SimCLR's and BYOL's
    code). ``clip_lr`` makes it ``min(lr, η‖w‖ / ‖g + wd·w‖)`` instead: the scheduled lr is a cap,
    not a factor (NVIDIA's LARC "clip" mode, solo-learn's ``clip_lr``), so a recipe taken from
    solo-learn needs it to mean the same η.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, clip_lr: bool = False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True, clip_lr=clip_lr)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = group["trust_coefficient"] * p_norm / (g_norm + group["eps"])
                    if group.get("clip_lr") and group["lr"] > 0:  # the step is lr · min(ratio / lr, 1)
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), ratio, torch.ones_like(p_norm))
                    grad = grad * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer's groups: the method's own (``method.param_groups()``) or the default ones.

    A method's group is ``{"params": [...], "lr_scale": float = 1, "weight_decay": bool = True}``
    (``lars`` defaults to the weight-decay flag: LARS adapts only decayed groups); every trainable
    parameter must be in exactly one group. ``weight_decay: True`` means ``train.weight_decay``.
    """
    hook = getattr(model, "param_groups", None)  # any module: a method's contract hook returns None for the default
    custom = hook() if callable(hook) else None
    groups = [dict(g) for g in custom] if custom is not None else default_param_groups(model)
    seen: set[int] = set()
    for i, g in enumerate(groups):
        g["params"] = [p for p in g["params"] if p.requires_grad]
        unknown = set(g) - {"params", "lr_scale", "weight_decay", "lars", "name"}
        require(not unknown, f"{type(model).__name__}.param_groups(): group {i} has unknown key(s) {sorted(unknown)}")
        ids = {id(p) for p in g["params"]}
        require(not ids & seen, f"{type(model).__name__}.param_groups(): a parameter is in two groups (group {i})")
        seen |= ids
        decay = g.get("weight_decay", True)
        g.update(lr_scale=float(g.get("lr_scale", 1.0)), weight_decay=weight_decay if decay else 0.0,
                 lars=bool(g.get("lars", decay)), name=str(g.get("name", f"group{i}")))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    require(not missing, f"{type(model).__name__}.param_groups() leaves out trainable parameters: {missing[:3]}")
    return [g for g in groups if g["params"]] or groups[:1]


def build_optimizer(model: nn.Module, cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """The optimizer over ``param_groups``; each group's lr is ``lr_scale`` x the scheduled lr."""
    name, wd = cfg["optimizer"], cfg["weight_decay"]
    groups = param_groups(model, wd)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "lars":  # .get: run configs saved before these settings existed still load
        return LARS(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd,
                    trust_coefficient=float(cfg.get("lars_trust_coefficient", 0.001)),
                    clip_lr=bool(cfg.get("lars_clip_lr", False)))
    for g in groups:
        g.pop("lars")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply the scheduled lr to every group, as a multiplier of the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, base_lr: float, cfg: dict[str, Any]) -> float:
    """Linear warm-up, then cosine (per step, or per epoch as the autoencoder repos do)."""
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if cfg["schedule"] == "constant":
        return base_lr
    if cfg["schedule"] == "cosine_epoch":
        epochs = max(1, total_steps // max(1, steps_per_epoch))
        progress = (step // max(1, steps_per_epoch)) / epochs
    else:
        progress = (step - warmup) / max(1, total_steps - warmup)
    min_lr = cfg["min_lr"]
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
