"""Shared plumbing of the trained drafters (heads, fspad, ...): checkpoint loading, the target's
hidden states of committed tokens, and static trees built from measured per-position acceptance.

A trained drafter declares `needs_hidden = True`; the engine then hands it the target's final hidden
state (after the final norm, so lm_head(h) = logits) of every prompt token (`observe_prompt`) and of
every verified tree node (`observe(..., hidden=)`). It keeps the rows of the committed tokens:
`self.features[i]` is the feature of context[i] for every context token but the last (the root of
the next tree, not yet through the target). Only the torch backend returns hidden states; elsewhere
the first step fails with a clear InputError.

Checkpoints: `checkpoint=None` takes the one shipped for this (method, embedded model); a path takes
that file (its JSON config beside it); `"random"` builds an untrained module (tests; output is still
identical to plain decoding, since the target verifies every draft).
"""

from __future__ import annotations

import heapq
from pathlib import Path

import torch

from clmkit.drafters._draft_lm import positive_int
from clmkit.errors import InputError
from clmkit.models import Model
from clmkit.sampling import Sampling
from clmkit.static_tree import TreeTemplate
from clmkit.tree import TokenTree
from clmkit.train.checkpoint import check_target, load_weights, read_config, shipped
from clmkit.train.loop import TargetParts

RANDOM = "random"
KEEP_FEATURES = 256  # committed features kept (drafters look back at most a window of these)


def depth_template(rank_probs: list[list[float]], budget: int) -> TreeTemplate:
    """The `budget`-node tree (root included) maximising the expected accepted length when the rank-r
    candidate at depth d is right with probability rank_probs[d-1][r] (Medusa's tree construction,
    with per-depth rates, the ones `clm train` measures on held-back data)."""
    depth, k = len(rank_probs), len(rank_probs[0])
    paths: list[tuple[int, ...]] = []
    heap = [(-rank_probs[0][0], (0,), 1.0)]  # (-path probability, path of ranks, parent's path probability)
    while heap and len(paths) + 1 < budget:
        neg_p, path, parent_p = heapq.heappop(heap)
        paths.append(path)
        d, r = len(path), path[-1]
        if r + 1 < k:
            heapq.heappush(heap, (-parent_p * rank_probs[d - 1][r + 1], path[:-1] + (r + 1,), parent_p))
        if d < depth:
            heapq.heappush(heap, (neg_p * rank_probs[d][0], path + (0,), -neg_p))
    return TreeTemplate.from_paths(paths) if paths else TreeTemplate([-1], [-1])


def fill_by_depth(template: TreeTemplate, root: int, candidates: torch.Tensor) -> TokenTree:
    """Node at depth d with rank r takes candidates[d-1, r] (Medusa: one candidate list per head)."""
    tokens = torch.empty(len(template), dtype=torch.long)
    tokens[0] = root
    for d, (nodes, _, ranks) in enumerate(template.levels):
        tokens[nodes] = candidates[d, ranks]
    return template.tree.with_tokens(tokens)


def geometric_rank_probs(depth: int, k: int) -> list[list[float]]:
    """Placeholder rates for an untrained module (tests): rank r at depth d right with 0.6^(d) * 0.5^r."""
    return [[0.6 ** (d + 1) * 0.5 ** r for r in range(k)] for d in range(depth)]


class TrainedDrafter:
    """Base of drafters whose module was trained by `clm train`: loads it, tracks committed features."""

    name = "trained"
    module_class: type = None  # the nn.Module `clm train NAME` trains
    needs_hidden = True
    default_budget = 12

    def __init__(self, model: Model, checkpoint: str | Path | None = None, budget: int | None = None, **module_options):
        self.model = model
        parts = TargetParts.of(model.module).to("cpu")
        if checkpoint == RANDOM:
            torch.manual_seed(0)
            self.module = self.module_class(parts, **module_options)
            self.config = {"rank_probs": None, "options": self.module.options}
        else:
            if module_options:
                raise InputError(f"unknown option(s) for drafter {self.name!r}: {', '.join(sorted(module_options))} "
                                 "(module options come from the checkpoint)")
            path = Path(checkpoint) if checkpoint is not None else shipped(self.name, model.name)
            if checkpoint is None and not path.exists():
                raise InputError(f"no {self.name!r} checkpoint ships for {model.name}; train one with "
                                 f"`clm train {self.name} --model ...` and pass --draft-checkpoint PATH")
            self.config = read_config(path)
            if self.config.get("method") != self.name:
                raise InputError(f"{path.name} is a {self.config.get('method')!r} checkpoint, not {self.name!r}")
            check_target(self.config, model, path)
            self.module = self.module_class(parts, **self.config["options"])
            load_weights(path, self.module)
        self.module.float().eval()
        self.budget = positive_int(budget if budget is not None else self.default_budget, "budget") + 1
        self.max_nodes = self.budget
        self.features: torch.Tensor | None = None
        self.known = 0  # context tokens whose features were observed
        self.sampling = Sampling()

    @classmethod
    def budget_options(cls, draft_tokens: int) -> dict:
        return {"budget": draft_tokens}

    @property
    def rank_probs(self) -> list[list[float]]:
        return self.config.get("rank_probs") or geometric_rank_probs(self.module.depth, 10)

    # -- the engine's hidden-states hook ---------------------------------------------------------

    def begin(self, prompt_ids: list[int], sampling: Sampling | None = None) -> None:
        self.sampling = sampling if sampling is not None else Sampling()
        self.features, self.known = None, 0

    def observe_prompt(self, hidden: torch.Tensor) -> None:
        self.features = hidden.detach().float()[-KEEP_FEATURES:]
        self.known = hidden.shape[0]

    def observe(self, tree: TokenTree, logits: torch.Tensor, verdict, hidden: torch.Tensor | None = None) -> None:
        if hidden is None:
            raise InputError(f"drafter {self.name!r} needs the target's hidden states: run it on the torch backend")
        rows = hidden.detach().float()[torch.tensor(verdict.path)]
        self.features = torch.cat([self.features, rows])[-KEEP_FEATURES:]
        self.known += len(verdict.path)

    def committed_features(self, context: list[int]) -> torch.Tensor:
        """Features of context[:-1] (the last KEEP_FEATURES of them), checked to be in step with `context`."""
        if self.features is None or self.known != len(context) - 1:
            raise InputError(f"drafter {self.name!r} got no target hidden states for this context: it needs the "
                             "engine's hidden-states hook (torch backend)")
        return self.features


def needs_torch(name: str | None) -> bool:
    """Whether drafter `name` reads the target's hidden states (so only the torch backend can run it):
    `clm generate --backend auto` then picks torch instead of llama.cpp."""
    from clmkit.drafters import DRAFTERS

    found = DRAFTERS.find(name) if name is not None else None
    # torch_only: drafters that add inputs to the target's forward (PPD's prompt embeddings)
    return getattr(found, "needs_hidden", False) or getattr(found, "torch_only", False)
