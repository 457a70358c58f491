"""Registration by import, shared by the name registries (methods, backbones, corruptions).

A registry package holds one module per entry; each module registers itself with a decorator when it
is imported. ``import_submodules`` imports them all, so a lookup sees every entry without the package
having to list its modules (and without importing them before a lookup needs them).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def import_submodules(package_name: str, package_path: Iterable[str]) -> None:
    """Import every public module (name not starting with ``_``) of a package.

    Call as ``import_submodules(__name__, __path__)`` from the package's ``__init__``; modules already
    imported are not imported again, so calling it before every lookup costs a directory listing.
    """
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


class Registry(Mapping[str, T]):
    """Entries registered by name with a decorator in the modules of one package, found by importing those
    modules on first use: adding a file with ``@REGISTRY.register("name")`` is the whole registration.

    The one mechanism behind methods, backbones and corruptions. Reading it (``name in``, ``[name]``,
    iteration) imports the package's public modules once; ``lookup`` says in one line what exists."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make the decorated class or function available as ``name``."""

        def deco(entry: T) -> T:
            self.add(name, entry)
            return entry

        return deco

    def add(self, name: str, entry: T) -> None:
        old = self._entries.get(name)
        if old is not None and old is not entry and _origin(old) != _origin(entry):  # a reloaded module may re-add
            raise RuntimeError(f"{self.kind} name '{name}' registered twice: {_origin(old)} and {_origin(entry)}")
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (a test's or a plugin's temporary entry); unknown names are ignored."""
        self._entries.pop(name, None)

    def discover(self) -> None:
        """Import every public module of the package (once), which runs their decorators."""
        if self._discovered:
            return
        self._discovered = True  # first: a module imported below may read the registry
        package = importlib.import_module(self.package)
        import_submodules(self.package, package.__path__)

    def lookup(self, name: str) -> T:
        """The entry for ``name``; an unknown name is one line listing the known ones."""
        if name not in self:
            raise UserError(f"unknown {self.kind} '{name}': choose one of {', '.join(sorted(self))}")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        self.discover()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(dict(self._entries))

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries


def _origin(entry: Any) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
