"""Corruptions by name, so recipes and the CLI can say ``overlay`` with ``alpha: 0.3``.

Each registered class is a small frozen dataclass holding the parameters, validated at
construction, and called as ``corruption(x, generator)`` (or ``(x1, x2, generator)`` for the
two-view ones, marked by ``two_views = True``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import UserError
from ..registry import Registry

CORRUPTIONS: Registry[type] = Registry("corruption", "unveil.corruptions")  # found by import, as methods


class Corruption:
    """Base of the configurable wrappers: a name for the registry and the call arity."""

    name: ClassVar[str] = ""
    two_views: ClassVar[bool] = False


def register_corruption(name: str) -> Callable[[type], type]:
    """Class decorator: make a corruption available as ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        CORRUPTIONS.add(name, cls)
        return cls

    return deco


def corruption_params(name: str) -> dict[str, Any]:
    """The parameters a corruption accepts, with their defaults."""
    cls = _lookup(name)
    params = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            params[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            params[f.name] = f.default_factory()
        else:
            params[f.name] = None
    return params


def build_corruption(name: str, **params: Any) -> Corruption:
    """Instantiate a registered corruption; unknown names or parameters get one clear line."""
    cls = _lookup(name)
    allowed = corruption_params(name)
    for key in params:
        if key not in allowed:
            raise UserError(
                f"corruption '{name}' has no parameter '{key}': choose from {', '.join(allowed) or '(none)'}"
            )
    return cls(**params)


def describe(name: str) -> str:
    """One line per corruption: name, first docstring line, parameters with defaults."""
    cls = _lookup(name)
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    params = ", ".join(f"{k}={v!r}" for k, v in corruption_params(name).items())
    return f"{name}: {doc}\n    params: {params or '(none)'}"


def _lookup(name: str) -> type:
    return CORRUPTIONS.lookup(name)
