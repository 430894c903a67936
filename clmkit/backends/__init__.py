"""Backends: what runs the target model's forward. One protocol, registered by name.

The engine never calls a model directly; it asks a backend for a `Sequence` (one KV cache) and
drives it:

    seq = backend.sequence(capacity)
    logits = seq.prefill(prompt_ids)        # [vocab]: the next-token logits after the prompt
    loop:
        logits = seq.tree(tree)             # [n, vocab]: one forward over a TokenTree (a chain of 1 = plain step)
        verdict = verify(tree, logits, ...)
        seq.keep(verdict.path)              # the cache again holds exactly the committed text

and, for B independent sequences decoded together (evaluation, serving), a `Batch`:

    batch = backend.batch(capacity)
    row, logits = batch.add(prompt_ids)     # any time: rows join and leave between steps
    logits_by_row = batch.step({row: token, ...})   # one token per row, one forward for all rows
    batch.drop(row)

Backends: `torch` (any HF causal LM, optional pre-packed oneDNN kernels; clmkit/backends/torch.py)
and `llama.cpp` (a GGUF through llama-cpp-python's low-level API; clmkit/backends/llamacpp.py).
Adding one = one module here that decorates a factory `(model_source, **options) -> Backend` with
`@register("name")`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from clmkit.errors import InputError

if TYPE_CHECKING:
    import torch

    from clmkit.tree import TokenTree


@runtime_checkable
class Sequence(Protocol):
    """One sequence's KV cache inside a backend. Positions are implicit: the cache holds `length`
    committed tokens at positions 0..length-1; a tree's node i goes to position length + depth[i]."""

    length: int
    hidden_states: "tuple[torch.Tensor, ...] | None"  # after a call with hidden=True: per layer [n, d]

    def prefill(self, ids: list[int], hidden: bool = False) -> "torch.Tensor":
        """Append `ids` (committed tokens); return the logits [vocab] after the last one. With `hidden`
        (torch only), `hidden_states` holds every layer's output for the ids (HF order, last = final norm)."""

    def tree(self, tree: "TokenTree", hidden: bool = False) -> "torch.Tensor":
        """One forward over every node of `tree` (node 0 = the last committed token, not yet cached):
        logits [n, vocab] float32, row i predicts node i's children. The nodes stay in the cache until
        `keep`. `hidden` as for prefill, one row per node."""

    def keep(self, path: list[int]) -> None:
        """Keep the nodes `path` (root first, each the child of the previous) of the last tree and drop
        the rest: afterwards `length` grew by len(path)."""

    def truncate(self, length: int) -> None:
        """Drop every token after the first `length` (benchmarks and tests restart from a prefix)."""

    def close(self) -> None:
        """Free the cache (llama.cpp: its sequence ids)."""


@runtime_checkable
class Batch(Protocol):
    """B independent sequences decoded one token per row per step, in one forward."""

    def add(self, ids: list[int]) -> tuple[int, "torch.Tensor"]:
        """Start a sequence with prompt `ids`; return its row handle and its next-token logits [vocab]."""

    def step(self, tokens: dict[int, int]) -> dict[int, "torch.Tensor"]:
        """Append one token to each given row (rows not given are left alone); logits [vocab] per row."""

    def drop(self, row: int) -> None:
        """The row is finished: free its cache."""


@runtime_checkable
class Backend(Protocol):
    name: str
    max_leaves: int | None  # most leaves one tree may have (llama.cpp: sequence ids); None = no limit
    max_rows: int | None  # most rows a Batch may hold at once; None = no limit
    near_tie: float  # top-2 logit gap below which a greedy divergence counts as kernel rounding

    def sequence(self, capacity: int) -> Sequence:
        """A fresh, empty cache for one sequence; `capacity` (tokens, tree nodes included) is a hint."""

    def batch(self, capacity: int) -> Batch:
        """An empty batch; `capacity` = the longest row (prompt + new tokens) expected, a hint."""


_REGISTRY: dict[str, Callable[..., Backend]] = {}
_MODULES = {"torch": "torch", "llama.cpp": "llamacpp"}
BACKENDS = ("auto", *_MODULES)


def register(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return name


def make_backend(name: str, source, **options) -> Backend:
    """Backend `name` for `source` (a torch.nn.Module for torch, a .gguf path for llama.cpp)."""
    check_name(name)
    if name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{_MODULES[name]}")
    return _REGISTRY[name](source, **options)


def tree_leaves(tree: "TokenTree") -> list[int]:
    """Nodes without children, in index order (each leaf path = one llama.cpp sequence id)."""
    return [i for i, c in enumerate(tree.children) if not c]


def load_for_cli(name: str, backend: str = "auto", kernel: str | None = None):
    """`--model/--backend/--kernel` of the CLI: torch gets the fastest measured kernel unless told."""
    from clmkit import models

    resolved = models.resolve_backend(name, backend)
    if resolved != "torch" and kernel is not None:
        raise InputError(f"--kernel applies to the torch backend, not {resolved}")
    if resolved == "torch":
        return models.load(name, backend="torch", kernel=kernel or "auto")
    return models.load(name, backend=resolved)
