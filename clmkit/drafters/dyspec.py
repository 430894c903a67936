"""`dyspec`: DySpec, a dynamic token tree grown greedily by draft probability (Xiong et al., 2024).

DySpec observes that a draft token's chance of acceptance tracks its draft probability, so the value
of a node is estimated by the product of draft probabilities along its path, and the tree is grown
greedily: a max-heap holds the places where a token could be added; the best one is popped and
filled, until `budget` draft tokens are placed. Docs: docs/drafters/dyspec.md.

A heap entry is "the next child of node p", with value
  greedy   : V(p) * q_p(t), t = p's best draft token not yet a child (children in descending q);
  sampling : V(p) * (1 - sum of q_p over p's children so far), the draft mass left for a further
             sibling; filling it draws t from q_p without the children already drawn (sampling
             without replacement), so the tree is verified with Draw.WITHOUT_REPLACEMENT and q = q_p.
and a new node c gets V(c) = V(p) * q_p(t). Knowing q_c needs a draft forward on c; it is run lazily
when c's entry reaches the top of the heap, together with the next best `width - 1` waiting nodes
(one draft forward over a tree mask instead of one per node).
"""

from __future__ import annotations

import heapq

import torch

from clmkit.drafters import register
from clmkit.drafters._draft_lm import DraftModelDrafter, positive_int
from clmkit.models import Model
from clmkit.tree import Draw, TokenTree

DEFAULT_BUDGET = 6  # draft tokens per step (small-scale setting; measurements in docs/drafters/dyspec.md)
DEFAULT_WIDTH = 4  # nodes fed to the draft model per draft forward
DEFAULT_MAX_DEPTH = 6


@register("dyspec")
class DySpec(DraftModelDrafter):
    name = "dyspec"

    def __init__(self, model: Model, draft_model: str | Model | None = None, budget: int = DEFAULT_BUDGET,
                 width: int = DEFAULT_WIDTH, max_depth: int = DEFAULT_MAX_DEPTH, **options):
        self.budget = positive_int(budget, "budget")
        self.width = positive_int(width, "width")
        self.max_depth = positive_int(max_depth, "max_depth")
        super().__init__(model, draft_model, **options)
        self.max_nodes = self.budget + 1

    @staticmethod
    def budget_options(draft_tokens: int) -> dict:
        return {"budget": draft_tokens}

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        lm, sampling = self.lm, self.sampling
        greedy = sampling.greedy
        max_depth = min(self.max_depth, lm.room(context))
        if max_depth < 1:
            return TokenTree.root(context[-1])
        q: dict[int, torch.Tensor] = {0: lm.probs(lm.start(context), sampling)}
        value = {0: 1.0}
        left: dict[int, torch.Tensor] = {}  # sampling: q_p with drawn children zeroed (unnormalised)
        order: dict[int, list[int]] = {}  # greedy: p's candidate tokens, best first
        rank: dict[int, int] = {}  # greedy: how many of them are children already
        heap: list[tuple[float, int, int]] = []  # (-value, tie-break, node whose next child this is)
        tick = 0

        def push(p: int) -> None:
            """Enter node p's next-child place (its value is exact once q_p is known, else V(p))."""
            nonlocal tick
            if p not in q:
                v = value[p]
            elif greedy:
                if p not in order:
                    k = min(self.budget, q[p].numel())
                    order[p] = torch.topk(q[p], k).indices.tolist()
                    rank[p] = 0
                if rank[p] >= len(order[p]):
                    return
                v = value[p] * float(q[p][order[p][rank[p]]])
            else:
                if p not in left:
                    left[p] = q[p].clone()
                mass = float(left[p].sum())
                if mass <= 1e-12:
                    return
                v = value[p] * mass
            tick += 1
            heapq.heappush(heap, (-v, tick, p))

        push(0)
        added = 0
        while added < self.budget and heap:
            _, _, p = heap[0]
            if p not in q:
                fed = self._expand(heap, q)
                # re-enter the fed nodes' places with their exact values
                heap[:] = [e for e in heap if e[2] not in fed]
                heapq.heapify(heap)
                for node in sorted(fed):
                    push(node)
                continue
            heapq.heappop(heap)
            if greedy:
                token = order[p][rank[p]]
                rank[p] += 1
            else:
                token = int(torch.multinomial(left[p], 1, generator=self.generator))
                left[p][token] = 0.0
            c = lm.add(p, token)
            value[c] = value[p] * float(q[p][token])
            added += 1
            push(p)  # p's next sibling place
            if lm.depth[c] < max_depth:
                push(c)  # c's first child place (value V(c) until q_c is known)
        if greedy:
            return lm.tree()
        rows = [q.get(i) for i in range(len(lm.tokens))]
        zero = torch.zeros_like(q[0])
        return lm.tree(Draw.WITHOUT_REPLACEMENT, torch.stack([r if r is not None else zero for r in rows]))

    def _expand(self, heap, q) -> set[int]:
        """Feed the best `width` waiting nodes to the draft model in one forward; record their q."""
        waiting = sorted((e for e in heap if e[2] not in q), key=lambda e: (e[0], e[1]))[: self.width]
        nodes = sorted(e[2] for e in waiting)  # creation order: parents before children
        logits = self.lm.feed(nodes)
        for node, row in zip(nodes, logits):
            q[node] = self.lm.probs(row, self.sampling)
        return set(nodes)
