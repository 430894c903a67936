"""Guides: one file per method, one protocol, registered by name.

A guide turns the target's next-token logits into the logits decoding uses, as a function of the
tokens generated so far, and follows the committed tokens. It plugs into the one decode loop:

    prefill logits      -> guide (state: nothing generated)      -> first token
    drafter's tree      -> guide walks it depth-first (rollback between branches), prunes the nodes
                           it forbids, gives each node its mask            (before the target forward)
    target logits/node  -> guide re-scores each node from that node's state (after the forward)
    verify              -> accepted tokens -> guide.advance(accepted)

Because every tree node is scored from its own path's state, the accepted tokens follow exactly
what plain decoding with the same guide would produce (greedy: token-identical; sampling: the same
distribution) - the guide is part of the target, not of the draft. See clmkit/guide/tree.py.

Methods: grammar (llguidance: JSON schema, regex, Lark, choice), aligned (ASAp, Grammar-Aligned
Decoding), momentum (Momentum Decoding), rectify (dead-end value rectification).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from clmkit.errors import InputError
from clmkit.registry import Registry

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Guide(Protocol):
    name: str
    reweights: bool  # False: the guide only masks (allowed()), the engine skips the re-scoring walk
    greedy_only: bool  # a decoding rule defined as greedy over re-scored logits (momentum)
    eos_ids: frozenset[int]  # tokens that end the output: a tree walk never advances through them

    def begin(self, prompt_ids: list[int], sampling) -> None:
        """A new sequence: the state becomes "nothing generated yet". `sampling` is the target's."""

    def allowed(self) -> torch.Tensor | None:
        """bool [vocab]: the tokens that may come next from the current state; None = all of them."""

    def reweight(self, logits: torch.Tensor, node: int) -> torch.Tensor:
        """The current state's raw next-token logits (1-D) -> the logits decoding uses (the mask of
        allowed() is applied afterwards). `node` is the row of the last target forward being scored:
        a tree node (0 = the root), or -1 at prefill (its last position); guides that read per-node
        features of that forward use it (rectify reads hidden states)."""

    def advance(self, tokens: list[int]) -> None:
        """Follow tokens appended to the output (committed tokens, or a tree walk going down)."""

    def rollback(self, n: int) -> None:
        """Undo the last n advanced tokens (a tree walk going back up)."""

    @property
    def finished(self) -> bool:
        """Nothing but EOS may follow: the engine ends the output with `self.eos` without a forward."""

    @property
    def complete(self) -> bool:
        """The output so far is complete (a sentence of the grammar); False = cut short."""


GUIDES = Registry("guide", __name__, skip=("cli", "tree"))
register = GUIDES.register


def available() -> list[str]:
    return GUIDES.names()


def check_guide(guide: Guide | None, sampling, ignore_eos: bool) -> None:
    """Combinations the engine refuses before generating."""
    if guide is None:
        return
    if not isinstance(guide, Guide):
        raise InputError(f"guide= takes a clmkit.guide.Guide (see clmkit.guide.make_guide), got {type(guide).__name__}")
    if ignore_eos and hasattr(guide, "eos"):
        raise InputError(f"ignore_eos cannot be combined with the {guide.name} guide: its output ends with EOS")
    if guide.greedy_only and not sampling.greedy:
        raise InputError(f"{guide.name} decoding is greedy over its own scores: use temperature 0")


def make_guide(name: str, model, **options) -> Guide:
    """Build a registered guide for `model`; options are the guide's own keyword arguments."""
    return GUIDES.get(name)(model, **options)
