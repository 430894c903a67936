"""Drafters: one file per method, one protocol, registered by name.

A drafter proposes a TokenTree rooted at the last committed token; the engine verifies it with one
target forward and reports back. Adding a method = adding one module here that decorates its class
with `@register("name")`; modules in this package are discovered automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from clmkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from clmkit.models import Model
    from clmkit.tree import TokenTree
    from clmkit.verify import Verdict


@runtime_checkable
class Drafter(Protocol):
    name: str
    max_nodes: int  # the largest tree it proposes, root included (sizes the KV cache)

    def begin(self, prompt_ids: list[int]) -> None:
        """A new sequence starts; drafters that keep state across requests keep it here."""

    def propose(self, context: list[int]) -> "TokenTree":
        """A tree rooted at context[-1], the last committed token (not yet in the target's cache)."""

    def observe(self, tree: "TokenTree", logits: "torch.Tensor", verdict: "Verdict") -> None:
        """The target's logits at every node of the verified tree, and what was accepted."""


_REGISTRY: dict[str, Callable[..., Drafter]] = {}


def register(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def make_drafter(name: str, model: "Model", **options) -> Drafter:
    """Build a registered drafter for `model`; options are the drafter's own keyword arguments."""
    _discover()
    if name not in _REGISTRY:
        raise InputError(f"unknown drafter {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](model, **options)
