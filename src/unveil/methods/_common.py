"""Helpers shared by the method modules (underscore: not a method, so the registry skips it)."""

from __future__ import annotations

from typing import Any

from ..errors import UserError


def reject_unknown_settings(kwargs: dict[str, Any], method: str, known: str) -> None:
    """One line naming the ``method.*`` settings a method does not take (a typo in a recipe would
    otherwise be silently ignored), and the ones it does."""
    if kwargs:
        raise UserError(f"unknown setting(s) method.{', method.'.join(sorted(kwargs))} for {method}: known ones are {known}")
