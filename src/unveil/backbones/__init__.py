"""Encoders. Every backbone maps images to pooled features ``(B, num_features)``;
``forward(x, return_map=True)`` also returns the last feature map ``(B, C, h, w)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import UserError

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn

    return deco


def _import_all() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone by name (e.g. ``resnet18``, ``resnet50``)."""
    _import_all()
    if name not in BACKBONES:
        raise UserError(f"unknown backbone '{name}': choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)
