"""Encoders. Every backbone maps images to pooled features ``(B, num_features)``;
``forward(x, return_map=True)`` also returns the last feature map ``(B, C, h, w)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import UserError
from ..registry import import_submodules

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn

    return deco


def _import_all() -> None:
    # Importing the modules runs their @register_backbone decorators.
    import_submodules(__name__, __path__)


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone by name (e.g. ``resnet18``, ``resnet50``)."""
    _import_all()
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}': choose one of {', '.join(sorted(BACKBONES))}")
    try:
        return BACKBONES[name](**kwargs)
    except TypeError as exc:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if not found:
            raise
        # e.g. a ViT recipe's patch_size left behind by backbone.name=resnet18
        raise UserError(f"backbone '{name}' has no setting {found.group(1)}: remove backbone.{found.group(1)}") from None


def backbone_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder for ``name`` (to inspect its settings); unknown names get one line."""
    _import_all()
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}': choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]
