"""`draft`: speculative sampling with a draft model (Leviathan et al. 2023; Chen et al. 2023).

Each step the draft model proposes a chain of `gamma` tokens after the committed text; the target
verifies the chain in one forward. Greedy: the chain is the draft's argmax continuation
(deterministic). Sampling: each token is drawn from the draft's distribution processed with the
target's temperature/top-k/top-p, which is recorded as q (Draw.IID: a chain is a tree whose nodes
have one child each), so `verify` applies the paper's acceptance rule min(1, p/q) and, on
rejection, samples from norm(max(p - q, 0)). Docs: docs/drafters/draft.md.
"""

from __future__ import annotations

import torch

from clmkit.drafters import register
from clmkit.drafters._draft_lm import DraftModelDrafter, positive_int
from clmkit.models import Model
from clmkit.tree import Draw, TokenTree

DEFAULT_GAMMA = 3  # a common setting for a separate draft model; measured per gamma in docs/drafters/draft.md


@register("draft")
class DraftChain(DraftModelDrafter):
    name = "draft"

    def __init__(self, model: Model, draft_model: str | Model | None = None, gamma: int = DEFAULT_GAMMA, **options):
        self.gamma = positive_int(gamma, "gamma")
        super().__init__(model, draft_model, **options)
        self.max_nodes = self.gamma + 1

    @staticmethod
    def budget_options(draft_tokens: int) -> dict:
        return {"gamma": draft_tokens}

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        lm, sampling = self.lm, self.sampling
        gamma = min(self.gamma, lm.room(context))
        if gamma < 1:
            return TokenTree.root(context[-1])
        logits = lm.start(context)
        node, qs = 0, []
        for i in range(gamma):
            if sampling.greedy:
                token = int(logits.argmax())
            else:
                q = lm.probs(logits, sampling)
                token = int(torch.multinomial(q, 1, generator=self.generator))
                qs.append(q)
            node = lm.add(node, token)
            if i + 1 < gamma:
                logits = lm.feed([node])[0]
        if sampling.greedy:
            return lm.tree()
        return lm.tree(Draw.IID, torch.stack(qs + [torch.zeros_like(qs[0])]))
