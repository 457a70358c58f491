"""Optimizers (SGD, LARS, AdamW, Adam) and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Parameter groups with ``lars=False`` (biases, norm layers) skip both the trust ratio and
    weight decay, as in SimCLR/BYOL/Barlow Twins.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, lars=True)
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
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * p_norm / (g_norm + group["eps"]),
                        torch.ones_like(p_norm),
                    )
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
    """Decay conv/linear weights only: biases and normalisation parameters are 1-d."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


def build_optimizer(model: nn.Module, cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    name, wd = cfg["optimizer"], cfg["weight_decay"]
    groups = param_groups(model, wd)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    for g in groups:
        g.pop("lars")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg["betas"]), weight_decay=wd)


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
