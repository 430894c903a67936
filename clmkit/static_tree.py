"""Static draft-tree templates: a fixed shape filled each step from a candidate table.

A template node is (parent, rank): "the rank-th candidate after the parent's token". Filling is one
gather per tree level, so drafting costs microseconds. `TreeTemplate.optimal` builds the shape that
maximises the expected number of accepted tokens for a node budget, given how often the rank-r
candidate turns out to be the target's next token (the same greedy construction Medusa and
Sequoia use: repeatedly add the node whose path probability is highest).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from clmkit.tree import TokenTree


@dataclass
class TreeTemplate:
    parents: list[int]  # parents[0] == -1 (root)
    ranks: list[int]  # ranks[i]: which candidate of its parent's token node i takes; ranks[0] == -1
    levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(init=False)  # (nodes, parents, ranks) per depth
    tree: TokenTree = field(init=False)  # structure with placeholder tokens, reused every step

    def __post_init__(self) -> None:
        depth = [0] * len(self.parents)
        for i, p in enumerate(self.parents[1:], start=1):
            depth[i] = depth[p] + 1
        self.levels = []
        for d in range(1, max(depth) + 1):
            nodes = [i for i, di in enumerate(depth) if di == d]
            self.levels.append((torch.tensor(nodes), torch.tensor([self.parents[i] for i in nodes]),
                                torch.tensor([self.ranks[i] for i in nodes])))
        self.tree = TokenTree(torch.zeros(len(self.parents), dtype=torch.long), torch.tensor(self.parents))

    def __len__(self) -> int:
        return len(self.parents)

    @property
    def depth(self) -> int:
        return len(self.levels)

    @classmethod
    def from_paths(cls, paths: list[tuple[int, ...]]) -> "TreeTemplate":
        """Paths of ranks from the root, e.g. (0,), (1,), (0, 0): the Token Recycling paper's notation."""
        index = {(): 0}
        parents, ranks = [-1], [-1]
        for path in sorted(set(paths), key=lambda p: (len(p), p)):
            if path[:-1] not in index:
                raise ValueError(f"path {path} has no parent path {path[:-1]}")
            index[path] = len(parents)
            parents.append(index[path[:-1]])
            ranks.append(path[-1])
        return cls(parents, ranks)

    @classmethod
    def optimal(cls, accept_probs: list[float], budget: int, max_depth: int) -> "TreeTemplate":
        """The `budget`-node tree (root included) with the largest expected accepted length, assuming
        the rank-r candidate is right with probability accept_probs[r] independently at every depth."""
        k = len(accept_probs)
        paths: list[tuple[int, ...]] = []
        heap = [(-accept_probs[0], (0,), 1.0)]  # (-path probability, path, parent's path probability)
        while heap and len(paths) + 1 < budget:
            neg_p, path, parent_p = heapq.heappop(heap)
            paths.append(path)
            if path[-1] + 1 < k:  # the next sibling
                heapq.heappush(heap, (-parent_p * accept_probs[path[-1] + 1], path[:-1] + (path[-1] + 1,), parent_p))
            if len(path) < max_depth:  # the first child
                heapq.heappush(heap, (neg_p * accept_probs[0], path + (0,), -neg_p))
        return cls.from_paths(paths)

    def expected_accepted(self, accept_probs: list[float]) -> float:
        """Expected number of accepted draft tokens under the same independence assumption."""
        prob = [1.0] * len(self)
        for i in range(1, len(self)):
            prob[i] = prob[self.parents[i]] * accept_probs[self.ranks[i]]
        return sum(prob[1:])

    def fill(self, root: int, candidates: torch.Tensor) -> TokenTree:
        """A TokenTree of this shape: root, then candidates[parent_token, rank] level by level (BFS)."""
        tokens = torch.empty(len(self), dtype=torch.long)
        tokens[0] = root
        for nodes, parents, ranks in self.levels:
            tokens[nodes] = candidates[tokens[parents], ranks]
        return self.tree.with_tokens(tokens)
