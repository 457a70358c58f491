"""Typed settings per method: a frozen dataclass derived from the method's constructor, checked before it runs.

The constructor's signature is the single source of a method's settings (name, type, default); ``limits``
on the class adds the allowed ranges. A recipe's ``method:`` section is checked against them first, so an
unknown key, a wrong type or an out-of-range value is one line naming the field and what it allows, and a
bug inside a constructor keeps its traceback (nothing turns a ``TypeError`` into "bad setting").
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from typing import Any, Literal, Union

from ..errors import UserError

NOT_SETTINGS = ("self", "backbone", "data_info")  # what the engine passes, not the recipe
_LIMIT = re.compile(r"^\s*(?:(>=|>|<=|<)\s*(-?[\d.e+-]+)|([\[(])\s*(-?[\d.e+-]+)\s*,\s*(-?[\d.e+-]+)\s*([\])]))\s*$")


@functools.cache
def settings_of(method_cls: type) -> type:
    """The method's settings as a frozen dataclass: one field per constructor argument, with its type and default."""
    hints = typing.get_type_hints(method_cls.__init__)
    fields = []
    for p in inspect.signature(method_cls.__init__).parameters.values():
        if p.name in NOT_SETTINGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = p.default if p.default is not p.empty else dataclasses.MISSING
        if isinstance(default, (list, dict, set)):
            fields.append((p.name, hints.get(p.name, Any), dataclasses.field(default_factory=lambda d=default: d)))
        else:
            fields.append((p.name, hints.get(p.name, Any), dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{method_cls.__name__}Settings", fields, frozen=True)


def setting_default(method_cls: type, name: str) -> Any:
    """The default the method's constructor gives setting ``name`` (None: no such setting, or no default)."""
    field = next((f for f in dataclasses.fields(settings_of(method_cls)) if f.name == name), None)
    return None if field is None or field.default is dataclasses.MISSING else field.default


def check_settings(name: str, method_cls: type, given: dict[str, Any]) -> None:
    """One line for the first unknown, mistyped or out-of-range ``method.*`` setting; nothing when all fit."""
    fields = {f.name: f for f in dataclasses.fields(settings_of(method_cls))}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise UserError(f"unknown setting(s) method.{', method.'.join(unknown)} for {name}: known ones are "
                        f"{', '.join(fields)}")
    limits: dict[str, str] = getattr(method_cls, "limits", {})
    for key, value in given.items():
        expected = fields[key].type
        if not _fits(value, expected):
            raise UserError(f"method.{key} must be {_describe(expected)} for {name}, got {value!r}")
        if key in limits and value is not None and not _within(value, limits[key]):
            raise UserError(f"method.{key} must be {_limit_words(limits[key])} for {name}, got {value!r}")


def _fits(value: Any, expected: Any) -> bool:
    """Whether a YAML value fits a type hint (lists stand for tuples; ints for floats; bools are not numbers)."""
    if expected is Any or expected is object:
        return True
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin in (list, tuple) or expected in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return all(_fits(v, inner[0]) for v in value) if len(inner) == 1 else True
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # a hint this checker does not read: the constructor decides


def _describe(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if expected in names:
        return names[expected]
    if origin in (list, tuple) or expected in (list, tuple):
        return "a list"
    if origin is dict or expected is dict:
        return "a mapping"
    return getattr(expected, "__name__", str(expected))


def _parse(limit: str) -> tuple[float, float, bool, bool]:
    """(low, high, low included, high included) of "> 0", ">= 1", "[0, 1]", "(0, 1]" ..."""
    m = _LIMIT.match(limit)
    if not m:
        raise ValueError(f"cannot read the limit {limit!r}")
    if m.group(1):
        op, x = m.group(1), float(m.group(2))
        return {">": (x, math.inf, False, True), ">=": (x, math.inf, True, True),
                "<": (-math.inf, x, True, False), "<=": (-math.inf, x, True, True)}[op]
    return float(m.group(4)), float(m.group(5)), m.group(3) == "[", m.group(6) == "]"


def _within(value: Any, limit: str) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    lo, hi, lo_in, hi_in = _parse(limit)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # not a number (e.g. "area"): the type check has already decided
        if v < lo or v > hi or (v == lo and not lo_in) or (v == hi and not hi_in):
            return False
    return True


def _limit_words(limit: str) -> str:
    lo, hi, lo_in, hi_in = _parse(limit)
    if hi == math.inf:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    if lo == -math.inf:
        return f"{'<=' if hi_in else '<'} {hi:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
