"""Parameter groups for weight decay: what the optimizer (``train.optim``) builds by default and
what a method's own ``param_groups()`` may reuse for a submodule (methods do not import ``train``)."""

from __future__ import annotations

from typing import Any

from torch import nn


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of parameters that modules declare exempt from weight decay.

    Follows timm's convention: a module's ``no_weight_decay()`` returns names (relative to that
    module) such as ``pos_embed`` and ``cls_token``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names |= {f"{prefix}.{n}" if prefix else n for n in declared()}
    return names


def default_param_groups(model: nn.Module, lr_scale: float = 1.0, prefix: str = "") -> list[dict[str, Any]]:
    """Two groups: weights with decay; biases, norms, other 1-d parameters and declared exemptions
    (``no_weight_decay()``) without. Parameter order follows ``model.named_parameters()``."""
    exempt = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": True, "lr_scale": lr_scale, "name": f"{prefix}decay"},
        {"params": no_decay, "weight_decay": False, "lr_scale": lr_scale, "name": f"{prefix}no_decay"},
    ]


def decay_all_or_default(model: nn.Module, weight_decay_all: bool) -> list[dict[str, Any]]:
    """``weight_decay_all``: one group, weight decay on every trainable parameter, BN and biases included
    (MoCo's, mix-ssl's and lightly's benchmark code pass ``model.parameters()`` to SGD with weight decay);
    else ``default_param_groups`` (norms and biases exempt)."""
    if not weight_decay_all:
        return default_param_groups(model)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": True, "name": "all"}]
