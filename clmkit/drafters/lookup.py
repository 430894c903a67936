"""Prompt lookup decoding (the field's baseline; Saxena 2023, HF `prompt_lookup_num_tokens`).

Find earlier occurrences of the context's last n tokens (n from `max_ngram` down to `min_ngram`)
and propose what followed them. HF proposes the continuation of one match as a chain; here the
continuations of up to `branches` distinct matches (most recent first) are merged into a trie, so
one target forward checks several guesses.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from clmkit.drafters import register
from clmkit.errors import InputError
from clmkit.tree import TokenTree

# Root + 2 draft tokens: on a 2-core CPU a 3-node forward costs ~1.2x a 1-token one, 4 nodes ~2x
# (`clm bench verify-cost`); 3 won the side-by-side tuning in docs/benchmarks.md. Raise it on a GPU.
DEFAULT_MAX_NODES = 3


@register("lookup")
class LookupDrafter:
    name = "lookup"

    def __init__(self, model=None, max_ngram: int = 3, min_ngram: int = 1, num_pred: int = 10, branches: int = 3,
                 max_nodes: int = DEFAULT_MAX_NODES):
        if not (1 <= min_ngram <= max_ngram) or num_pred < 1 or branches < 1 or max_nodes < 2:
            raise InputError("lookup: need 1 <= min_ngram <= max_ngram, num_pred >= 1, branches >= 1, max_nodes >= 2")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.num_pred, self.branches = num_pred, branches
        self.max_nodes = max_nodes

    @staticmethod
    def budget_options(draft_tokens: int) -> dict:
        return {"max_nodes": draft_tokens + 1}

    def begin(self, prompt_ids, sampling) -> None:
        pass

    def continuations(self, context: list[int]) -> list[list[int]]:
        """Up to `branches` distinct continuations of matches of the longest matching suffix n-gram."""
        ctx = np.asarray(context, dtype=np.int64)
        found: list[list[int]] = []
        for n in range(min(self.max_ngram, len(ctx) - 1), self.min_ngram - 1, -1):
            windows = sliding_window_view(ctx[:-1], n)  # windows[i] = ctx[i:i+n], all followed by a token
            starts = np.flatnonzero((windows == ctx[-n:]).all(axis=1))
            for s in starts[::-1]:  # most recent first
                cont = ctx[s + n : s + n + self.num_pred].tolist()
                if cont and cont not in found:
                    found.append(cont)
                    if len(found) == self.branches:
                        return found
            if found:
                return found
        return found

    def propose(self, context: list[int]) -> TokenTree:
        tokens, parents = [context[-1]], [-1]
        children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node: shared prefixes merge
        for cont in self.continuations(context):
            node = 0
            for tok in cont:
                if (node, tok) not in children:
                    if len(tokens) >= self.max_nodes:
                        break
                    children[(node, tok)] = len(tokens)
                    tokens.append(tok)
                    parents.append(node)
                node = children[(node, tok)]
        return TokenTree(torch.tensor(tokens), torch.tensor(parents))

    def observe(self, tree, logits, verdict) -> None:
        pass
