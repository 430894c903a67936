"""Plug-ins registered by name: drafters, guides, backends, lab experiments.

Each kind lives in one package, one module per method; a module registers itself with a decorator
and the package's modules are imported on the first lookup, so adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from clmkit.errors import InputError


class Registry:
    def __init__(self, kind: str, package: str | None = None, skip: tuple[str, ...] = ()):
        self.kind = kind  # "drafter", "guide", ...: named in the error for an unknown name
        self.package = package  # modules under it are imported on first lookup (None: nothing to discover)
        self.skip = skip  # module names that are not plug-ins (besides those starting with "_")
        self.entries: dict[str, Any] = {}
        self._discovered = package is None

    def register(self, name: str) -> Callable:
        """Decorator: `@registry.register("name")` over a factory (class or function)."""

        def wrap(factory):
            self.entries[name] = factory
            return factory

        return wrap

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_") and not info.ispkg and info.name not in self.skip:
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self.entries)

    def find(self, name: str) -> Any | None:
        self._discover()
        return self.entries.get(name)

    def get(self, name: str) -> Any:
        """The entry registered as `name`; an unknown name is a user error listing the known ones."""
        entry = self.find(name)
        if entry is None:
            raise InputError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return entry
