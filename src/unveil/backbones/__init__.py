"""Encoders. Every backbone maps images to pooled features ``(B, num_features)``;
``forward(x, return_map=True)`` also returns the last feature map ``(B, C, h, w)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import UserError
from ..registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone", __name__)


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES.add(name, fn)
        return fn

    return deco


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone by name (e.g. ``resnet18``, ``resnet50``)."""
    builder = BACKBONES.lookup(name)
    try:
        return builder(**kwargs)
    except TypeError as exc:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if not found:
            raise
        # e.g. a ViT recipe's patch_size left behind by backbone.name=resnet18
        raise UserError(f"backbone '{name}' has no setting {found.group(1)}: remove backbone.{found.group(1)}") from None


def backbone_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder for ``name`` (to inspect its settings); unknown names get one line."""
    return BACKBONES.lookup(name)
