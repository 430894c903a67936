"""Drafters: one file per method, one protocol, registered by name.

A drafter proposes a TokenTree rooted at the last committed token; the engine verifies it with one
target forward and reports back. Adding a method = adding one module here that decorates its class
with `@register("name")`; modules in this package are discovered automatically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clmkit.errors import InputError
from clmkit.registry import Registry

if TYPE_CHECKING:
    import torch

    from clmkit.models import Model
    from clmkit.sampling import Sampling
    from clmkit.tree import TokenTree
    from clmkit.verify import Verdict


@runtime_checkable
class Drafter(Protocol):
    name: str
    max_nodes: int  # the largest tree it proposes, root included (sizes the KV cache)

    def begin(self, prompt_ids: list[int], sampling: "Sampling") -> None:
        """A new sequence starts. Drafters that keep state across requests keep it here.

        `sampling` is the target's; drafters that sample should draw from their own distribution
        processed the same way (and record it as TokenTree.q), using their own torch.Generator."""

    def propose(self, context: list[int]) -> "TokenTree":
        """A tree rooted at context[-1], the last committed token (not yet in the target's cache)."""

    def observe(self, tree: "TokenTree", logits: "torch.Tensor", verdict: "Verdict") -> None:
        """The target's logits at every node of the verified tree, and what was accepted."""


DRAFTERS = Registry("drafter", __name__)
register = DRAFTERS.register


def available() -> list[str]:
    return DRAFTERS.names()


def takes_draft_model(name: str) -> bool:
    """Whether drafter `name` drafts with a model (accepts `draft_model=`: a model or self:N)."""
    return bool(getattr(DRAFTERS.find(name), "takes_draft_model", False))


def budget_options(name: str, draft_tokens: int) -> dict:
    """The options that make drafter `name` propose trees of (at most) `draft_tokens` nodes below the
    root: what `--tree-budget` means for every drafter. Each drafter maps it to its own keywords."""
    if draft_tokens < 1:
        raise InputError(f"the tree budget must be >= 1 draft token, got {draft_tokens}")
    factory = DRAFTERS.get(name)
    if not hasattr(factory, "budget_options"):
        raise InputError(f"drafter {name!r} has no single tree budget; set its shape with --option")
    return factory.budget_options(draft_tokens)


def make_drafter(name: str, model: "Model", **options) -> Drafter:
    """Build a registered drafter for `model`; options are the drafter's own keyword arguments."""
    factory = DRAFTERS.get(name)
    try:
        return factory(model, **options)
    except TypeError as e:  # an option the drafter does not take
        if "keyword argument" not in str(e):
            raise
        raise InputError(f"drafter {name!r}: {str(e).split(') ', 1)[-1]}") from None
