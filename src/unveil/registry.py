"""Registration by import, shared by the name registries (methods, backbones).

A registry package holds one module per entry; each module registers itself with a decorator when it
is imported. ``import_submodules`` imports them all, so a lookup sees every entry without the package
having to list its modules (and without importing them before a lookup needs them).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_submodules(package_name: str, package_path: Iterable[str]) -> None:
    """Import every public module (name not starting with ``_``) of a package.

    Call as ``import_submodules(__name__, __path__)`` from the package's ``__init__``; modules already
    imported are not imported again, so calling it before every lookup costs a directory listing.
    """
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
