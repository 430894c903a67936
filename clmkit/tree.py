"""TokenTree: the candidate tokens one target forward verifies, and its attention mask.

Node 0 is the root: the last committed token, not yet in the KV cache. Every other node is a draft
token whose parent comes before it (parents[i] < i). Plain decoding is the tree with only the root.

A node attends to the whole committed prefix and to its own ancestors (itself included), and sits at
position `prefix_length + depth`, so each node gets the logits it would get if its path were decoded
one token at a time. Siblings share a position, which is why positions and cache slots differ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum

import torch


class Draw(str, Enum):
    """How a node's children were drawn; the lossless acceptance rule depends on it (see verify.py)."""

    DETERMINISTIC = "deterministic"  # a pure function of the context (lookup, recycling, top-k trees)
    IID = "iid"  # children sampled independently from the draft distribution q
    WITHOUT_REPLACEMENT = "without-replacement"  # children sampled from q without replacement (Gumbel-top-k)


@dataclass
class TokenTree:
    tokens: torch.Tensor  # [n] long
    parents: torch.Tensor  # [n] long, parents[0] == -1
    draw: Draw = Draw.DETERMINISTIC
    q: torch.Tensor | None = None  # [n, vocab] draft distribution each node's children were drawn from
    depth: torch.Tensor = field(init=False)  # [n] long
    ancestors: torch.Tensor = field(init=False)  # [n, n] bool, ancestors[i, j]: j is i or an ancestor of i
    children: list[list[int]] = field(init=False)  # in draw order
    is_chain: bool = field(init=False)  # a single path: plain causal attention suffices

    def __post_init__(self) -> None:
        self.tokens = self.tokens.to(torch.long).reshape(-1)
        self.parents = self.parents.to(torch.long).reshape(-1)
        n = self.tokens.numel()
        if n == 0 or self.parents.numel() != n or int(self.parents[0]) != -1:
            raise ValueError("a TokenTree needs a root (node 0, parent -1) and one parent per node")
        parents = self.parents.tolist()
        if any(not 0 <= p < i for i, p in enumerate(parents[1:], start=1)):
            raise ValueError("every non-root node's parent must be an earlier node")
        if self.draw is not Draw.DETERMINISTIC and self.q is None and n > 1:
            raise ValueError(f"a tree drawn {self.draw.value} needs the draft distribution q")
        depth = [0] * n
        self.children = [[] for _ in range(n)]
        for i, p in enumerate(parents[1:], start=1):
            depth[i] = depth[p] + 1
            self.children[p].append(i)
        self.depth = torch.tensor(depth, dtype=torch.long)
        # ancestors = reflexive-transitive closure of "parent of", one row gather per tree level.
        anc = torch.eye(n, dtype=torch.bool)
        has_parent = self.parents >= 0
        parent_idx = self.parents.clamp(min=0)
        for _ in range(max(depth)):
            anc = anc | (anc[parent_idx] & has_parent[:, None])
        self.ancestors = anc
        self.is_chain = parents == list(range(-1, n - 1))

    @classmethod
    def root(cls, token: int) -> "TokenTree":
        return cls(torch.tensor([token]), torch.tensor([-1]))

    @classmethod
    def chain(cls, root: int, draft: list[int], draw: Draw = Draw.DETERMINISTIC, q: torch.Tensor | None = None):
        """Root followed by a single path of draft tokens (prompt lookup, draft-model chains)."""
        n = len(draft) + 1
        return cls(torch.tensor([root, *draft]), torch.arange(-1, n - 1), draw=draw, q=q)

    def __len__(self) -> int:
        return self.tokens.numel()

    def with_tokens(self, tokens: torch.Tensor) -> "TokenTree":
        """Same shape, new tokens: skips recomputing the structure (static trees reuse it every step)."""
        tree = copy.copy(self)
        tree.tokens = tokens
        return tree

    def subtree(self, keep: list[int]) -> "TokenTree":
        """The nodes `keep` (ascending, root included, each kept node's parent kept), re-indexed 0..k-1.
        Order is preserved, so children keep their draw order and parents still come first."""
        if not keep or keep[0] != 0 or any(b <= a for a, b in zip(keep, keep[1:])):
            raise ValueError("subtree: keep must be ascending node indices starting with the root 0")
        new_index = {old: new for new, old in enumerate(keep)}
        parents = self.parents.tolist()
        try:
            new_parents = [-1] + [new_index[parents[old]] for old in keep[1:]]
        except KeyError:
            raise ValueError("subtree: a kept node's parent was dropped") from None
        idx = torch.tensor(keep)
        q = None if self.q is None else self.q[idx]
        return TokenTree(self.tokens[idx], torch.tensor(new_parents), draw=self.draw, q=q)

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to `node`, inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]


@dataclass
class EmbeddingNodes:
    """Extra nodes of one tree forward given by input embeddings instead of token ids (PPD's trained
    prompt tokens, clmkit/drafters/ppd.py). Row j hangs below node `parents[j]` of the combined list
    (the tree's n nodes first, then these rows: parents[j] < n + j), so it gets the position and the
    attention of a tree node there. The backend returns their logits separately, and their keys and
    values never stay in the cache (`keep` keeps tree nodes only)."""

    embeds: torch.Tensor  # [m, d]
    parents: torch.Tensor  # [m] long, indices into tree nodes + earlier rows

    def attach(self, tree: TokenTree) -> TokenTree:
        """The combined tree (these rows as placeholder tokens 0): depth, ancestors, mask, positions."""
        if self.embeds.shape[0] != self.parents.numel():
            raise ValueError("EmbeddingNodes: one parent per embedding row")
        return TokenTree(torch.cat([tree.tokens, torch.zeros(self.parents.numel(), dtype=torch.long)]),
                         torch.cat([tree.parents, self.parents.to(torch.long)]))

    def __len__(self) -> int:
        return self.parents.numel()


def tree_attention_mask(
    tree: TokenTree,
    prefix_length: int,
    dtype: torch.dtype,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Additive float mask [1, 1, n, prefix_length + n]: 0 where a node may attend, dtype-min elsewhere.

    (A bool mask is silently wrong under some HF attention paths; the additive float form is not.)
    With `sliding_window`, a key is also masked once it is `sliding_window` or more positions behind
    the query, the rule HF applies to sliding-attention layers.
    """
    n = len(tree)
    allowed = torch.ones(n, prefix_length + n, dtype=torch.bool)
    allowed[:, prefix_length:] = tree.ancestors
    if sliding_window is not None:
        q_pos = prefix_length + tree.depth
        kv_pos = torch.cat([torch.arange(prefix_length), prefix_length + tree.depth])
        allowed &= kv_pos[None, :] > q_pos[:, None] - sliding_window
    mask = torch.zeros(n, prefix_length + n, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
