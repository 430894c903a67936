"""`rsd`: Recursive Speculative Decoding (Jeon et al., 2024): draft trees sampled without replacement.

Two tree builders, one draft forward per tree level (all of a level's nodes fed together under a
tree mask):
  * RSD-C (`variant="c"`): constant branching factors per level (`branching`, e.g. "3,2,1"): every
    node at level l gets `branching[l]` distinct children drawn from the draft distribution without
    replacement, by Gumbel-top-k (the k largest log q + Gumbel noise).
  * RSD-S (`variant="s"`): stochastic beam search (Kool et al., 2019) with `beam_width` beams for
    `depth` levels: every beam's children get Gumbel-perturbed log-probabilities, conditioned on the
    parent's perturbed value (the top-down Gumbel construction), and the `beam_width` largest over
    all beams are kept.
Either way each node's children are the first few of a Gumbel-top-k draw from the node's draft
distribution q, in that order, so `verify` checks them with recursive rejection sampling for
sampling without replacement (Draw.WITHOUT_REPLACEMENT, q per node). How many children a node keeps
may depend on the perturbed values but never on the identity of the child it would add next (the
Gumbel max and argmax are independent), which keeps the verification lossless.
Greedy decoding: the deterministic counterparts, top-k children per node (RSD-C) and plain beam
search over draft log-probabilities (RSD-S), verified as deterministic trees.
Docs: docs/drafters/rsd.md.
"""

from __future__ import annotations

import numpy as np
import torch

from clmkit.drafters import register
from clmkit.drafters._draft_lm import DraftModelDrafter, gumbel, int_list, positive_int
from clmkit.errors import InputError
from clmkit.models import Model
from clmkit.tree import Draw, TokenTree

DEFAULT_VARIANT = "c"
DEFAULT_BRANCHING = "2,1,1"  # RSD-C: children per node at each level (6 draft tokens); see docs/drafters/rsd.md
DEFAULT_BEAM_WIDTH = 2  # RSD-S
DEFAULT_DEPTH = 3  # RSD-S


def conditioned_gumbel(parent: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Kool et al.'s shift of children's perturbed log-probs [b, V] so that each row's max equals its
    parent's perturbed value parent[b]: -log(exp(-T) - exp(-Z) + exp(-G)), computed stably (their
    appendix: v = T - G + log1mexp(G - Z), result T - max(v, 0) - log1p(exp(-|v|)))."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = perturbed.max(-1, keepdims=True)
        t = parent[:, None]
        x = np.minimum(perturbed - z, 0.0)
        log1mexp = np.where(x > -0.6931, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))
        v = t - perturbed + log1mexp
        out = t - np.maximum(v, 0.0) - np.log1p(np.exp(-np.abs(v)))
    return np.where(np.isneginf(perturbed), -np.inf, out)


@register("rsd")
class RSD(DraftModelDrafter):
    name = "rsd"

    def __init__(self, model: Model, draft_model: str | Model | None = None, variant: str = DEFAULT_VARIANT,
                 branching=DEFAULT_BRANCHING, beam_width: int = DEFAULT_BEAM_WIDTH, depth: int = DEFAULT_DEPTH,
                 **options):
        self.variant = str(variant).lower().removeprefix("rsd-")
        if self.variant not in ("c", "s"):
            raise InputError(f"rsd variant must be 'c' (constant branching) or 's' (stochastic beam search), got {variant!r}")
        self.branching = int_list(branching, "branching")
        self.beam_width = positive_int(beam_width, "beam_width")
        self.depth = positive_int(depth, "depth")
        super().__init__(model, draft_model, **options)
        if self.variant == "c":
            size, width = 0, 1
            for b in self.branching:
                width *= b
                size += width
        else:
            size = self.beam_width * self.depth
        self.max_nodes = size + 1

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        lm = self.lm
        levels = len(self.branching) if self.variant == "c" else self.depth
        levels = min(levels, lm.room(context))
        if levels < 1:
            return TokenTree.root(context[-1])
        q = {0: lm.probs(lm.start(context), self.sampling)}
        if self.variant == "c":
            self._constant(q, levels)
        else:
            self._beam(q, levels)
        if self.sampling.greedy:
            return lm.tree()
        zero = torch.zeros_like(q[0])
        return lm.tree(Draw.WITHOUT_REPLACEMENT, torch.stack([q.get(i, zero) for i in range(len(lm.tokens))]))

    def _feed(self, nodes: list[int], q: dict) -> None:
        for node, row in zip(nodes, self.lm.feed(nodes)):
            q[node] = self.lm.probs(row, self.sampling)

    def _constant(self, q: dict, levels: int) -> None:
        """RSD-C: branching[l] children per node at level l, Gumbel-top-k (top-k when greedy)."""
        frontier = [0]
        for level in range(levels):
            new = []
            for p in frontier:
                logq = q[p].double().log()
                k = min(self.branching[level], int((q[p] > 0).sum()))
                scores = logq if self.sampling.greedy else logq + gumbel(logq.shape, self.generator)
                for token in torch.topk(scores, k).indices.tolist():  # descending: the draw order
                    new.append(self.lm.add(p, token))
            if level + 1 < levels and new:
                self._feed(new, q)
            frontier = new

    def _beam(self, q: dict, levels: int) -> None:
        """RSD-S: stochastic beam search (beam search over draft log-probs when greedy).

        Small arrays, many steps: numpy keeps the per-op overhead low; the noise comes from the
        drafter's torch generator."""
        greedy = self.sampling.greedy
        beams = [0]
        logp = np.zeros(1)  # log-prob of each beam's path
        pert = np.zeros(1)  # its perturbed (Gumbel) log-prob
        for level in range(levels):
            with np.errstate(divide="ignore"):
                logq = np.log(torch.stack([q[b] for b in beams]).double().numpy())  # [beams, V]
            phi = logp[:, None] + logq
            if greedy:
                scores = phi
            else:
                scores = conditioned_gumbel(pert, phi + gumbel(phi.shape, self.generator).numpy())
            scores = scores.reshape(-1)
            k = min(self.beam_width, int(np.isfinite(scores).sum()))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]  # descending score
            vocab = logq.shape[1]
            # insert grouped by parent, each parent's children in descending score (their draw order)
            pick = top[np.argsort(top // vocab, kind="stable")]
            new = [self.lm.add(beams[r], t) for r, t in zip((pick // vocab).tolist(), (pick % vocab).tolist())]
            logp, pert = phi.reshape(-1)[pick], scores[pick]
            beams = new
            if level + 1 < levels:
                self._feed(new, q)
