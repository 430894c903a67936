"""Token Recycling (Luo et al., 2024: "Turning Trash into Treasure: Accelerating Inference of Large
Language Models with Token Recycling").

Every verification already computes the target's distribution at every tree node; decoding throws
away all but one token. Token Recycling keeps each node's top-k candidates in an adjacency matrix
`candidates[token] = top-k next tokens seen after `token`` (vocab x k, ~1.5 MB here) and drafts the
next tree by a BFS over that matrix along a static tree template. The matrix persists across
requests (hot start) and can be saved and loaded.

The template's shape and size are chosen for the hardware: `TreeTemplate.optimal` places nodes by
how often each candidate rank is right (measured, and kept up to date in `rank_counts`), and the
node budget comes from the measured cost of verifying n tokens at once (`clm bench verify-cost`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clmkit.drafters import register
from clmkit.errors import InputError
from clmkit.static_tree import TreeTemplate
from clmkit.tree import TokenTree

# How often the rank-r candidate was the target's next token: measured with SmolLM2-135M-Instruct
# on 26 Spec-Bench questions outside the benchmark sample (greedy), see docs/drafters/recycling.md.
# Used to shape the template.
DEFAULT_ACCEPT_PROBS = [0.263, 0.066, 0.036, 0.022, 0.016, 0.014, 0.009, 0.008]
# Nodes incl. root. On a 2-core CPU a forward over 4+ nodes costs ~2x one token (`clm bench verify-cost`),
# so the side-by-side tuning in docs/drafters/recycling.md picked 3; the paper's large tree is for GPUs.
DEFAULT_BUDGET = 3
DEFAULT_DEPTH = 6


@register("recycling")
class RecyclingDrafter:
    name = "recycling"

    def __init__(self, model, k: int = 8, budget: int = DEFAULT_BUDGET, max_depth: int = DEFAULT_DEPTH,
                 accept_probs: list[float] | None = None, state: str | Path | None = None):
        if k < 1 or budget < 2 or max_depth < 1:
            raise InputError("recycling: need k >= 1, budget >= 2 (the root counts), max_depth >= 1")
        probs = list(accept_probs or DEFAULT_ACCEPT_PROBS)[:k]
        probs += [probs[-1]] * (k - len(probs))
        self.k = k
        self.vocab_size = model.vocab_size
        self.template = TreeTemplate.optimal(probs, budget, max_depth)
        self.max_nodes = len(self.template)
        self.candidates = torch.zeros(self.vocab_size, k, dtype=torch.long)  # cold start: all token 0
        self.rank_counts = torch.zeros(k + 1, dtype=torch.long)  # last bin: not among the k candidates
        if state is not None:
            self.load(state)

    @staticmethod
    def budget_options(draft_tokens: int) -> dict:
        return {"budget": draft_tokens + 1}

    def begin(self, prompt_ids, sampling) -> None:
        pass  # the matrix is kept across requests on purpose (hot start)

    def propose(self, context: list[int]) -> TokenTree:
        return self.template.fill(context[-1], self.candidates)

    @torch.inference_mode()
    def observe(self, tree: TokenTree, logits: torch.Tensor, verdict) -> None:
        # How often the target's next token sat at each rank of the row we drafted from (for tuning).
        path_tokens = tree.tokens[verdict.path]
        nxt = torch.tensor(verdict.tokens)
        hits = self.candidates[path_tokens] == nxt[:, None]
        ranks = torch.where(hits.any(1), hits.int().argmax(1), torch.tensor(self.k))
        self.rank_counts += torch.bincount(ranks, minlength=self.k + 1)
        # Recycle: every node's top-k becomes the candidate row of its token.
        self.candidates[tree.tokens] = logits.topk(self.k, dim=-1).indices

    @property
    def measured_accept_probs(self) -> list[float]:
        total = int(self.rank_counts.sum())
        return [int(c) / total for c in self.rank_counts[: self.k]] if total else []

    def save(self, path: str | Path) -> None:
        save_file({"candidates": self.candidates, "rank_counts": self.rank_counts}, str(path),
                  metadata={"format": "clmkit-recycling-1", "vocab_size": str(self.vocab_size), "k": str(self.k)})

    def load(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"recycling state file not found: {path}")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"recycling state file {path} is corrupt or not a safetensors file: {e}") from e
        cand = state.get("candidates")
        if cand is None or tuple(cand.shape) != (self.vocab_size, self.k) or cand.dtype != torch.long:
            shape = None if cand is None else tuple(cand.shape)
            raise InputError(f"recycling state {path} does not fit this model: candidates {shape}, "
                             f"expected ({self.vocab_size}, {self.k})")
        if int(cand.min()) < 0 or int(cand.max()) >= self.vocab_size:
            raise InputError(f"recycling state {path} holds token ids outside the vocabulary")
        self.candidates = cand.clone()
        counts = state.get("rank_counts")
        if counts is not None and counts.shape == self.rank_counts.shape:
            self.rank_counts = counts.clone()
