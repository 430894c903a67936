"""Grammar-Aligned Decoding: ASAp (Park et al., 2024, "Grammar-Aligned Decoding").

Constrained decoding masks and renormalises each step, so it samples from
    Q(w) = prod_i P(w_i | w_<i) 1[w_<=i is a grammatical prefix] / Z(w_<i),
not from the grammar-conditioned P(w | w in L). The exact sampler needs the expected future
grammaticality (EFG) of every prefix,
    c(w) = sum_t P(t | w) c(w t),   c(complete w + EOS) = 1,   c(w t) = 0 if t leaves the grammar,
and samples t with probability proportional to P(t | w) c(w t). ASAp keeps a trie of visited prefixes
with an over-approximation of c: 1 for an unseen prefix (what plain constrained decoding assumes),
tightened after every sample by recomputing c bottom-up along the sampled path from the observed
next-token distributions. The estimates only decrease towards the true c, so the sampling
distribution converges to P(w | w in L).

Here P is the target's distribution after temperature: the re-weighting adds T * log c to the logits,
which becomes + log c after the sampler divides by T. Top-k / top-p would cut P itself: refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from clmkit.errors import InputError
from clmkit.guide import register
from clmkit.guide.grammar import Grammar


@dataclass
class Prefix:
    """A trie node: one grammatical prefix of the output."""

    efg: float = 1.0  # the over-approximation of c(prefix)
    allowed: torch.Tensor | None = None  # tokens the grammar allows next (once observed)
    probs: torch.Tensor | None = None  # P(token | prefix) of those tokens, observed at a visit
    children: dict[int, "Prefix"] = field(default_factory=dict)

    def child_efg(self) -> torch.Tensor:
        """c(prefix + t) estimates for the allowed tokens, in `allowed` order (1 = not yet visited)."""
        c = torch.ones(self.allowed.numel(), dtype=torch.float64)
        if self.children:  # few children, possibly many allowed tokens: look the children up (allowed is sorted)
            tokens = torch.tensor(list(self.children))
            efg = torch.tensor([child.efg for child in self.children.values()], dtype=torch.float64)
            at = torch.searchsorted(self.allowed, tokens).clamp(max=self.allowed.numel() - 1)
            found = self.allowed[at] == tokens
            c[at[found]] = efg[found]
        return c


@register("aligned")
class Aligned:
    """ASAp over a grammar: repeated samples from the same prompt converge to P(text | grammar)."""

    name = "aligned"
    reweights = True
    greedy_only = False

    def __init__(self, model, **grammar):
        self.grammar = Grammar(model, **grammar)
        self.eos, self.eos_ids = self.grammar.eos, self.grammar.eos_ids
        self.tries: dict[tuple, Prefix] = {}  # prompt -> root of its trie
        self.path: list[Prefix] = []  # root .. current prefix
        self.temperature = 1.0
        self.samples = 0

    def begin(self, prompt_ids: list[int], sampling) -> None:
        if sampling.greedy or sampling.top_k or sampling.top_p < 1:
            raise InputError("aligned (ASAp) sampling needs temperature > 0 and no top-k / top-p: it samples from "
                             "P(text | grammar) with P the model's (tempered) distribution")
        self.update()
        self.temperature = sampling.temperature
        self.grammar.begin(prompt_ids)
        self.path = [self.tries.setdefault(tuple(prompt_ids), Prefix())]
        self.samples += 1

    def update(self) -> None:
        """Tighten the EFG estimates bottom-up along the last sampled path (the paper's update)."""
        for node in reversed(self.path):
            if node.probs is not None:
                node.efg = float((node.probs * node.child_efg()).sum())

    def allowed(self) -> torch.Tensor:
        return self.grammar.allowed()

    def reweight(self, logits: torch.Tensor, node: int) -> torch.Tensor:
        prefix = self.path[-1]
        if prefix.probs is None:  # observe P(. | prefix) once: the model is deterministic per prefix
            allowed = self.grammar.allowed()
            probs = torch.softmax(logits.double() / self.temperature, -1)
            prefix.allowed = torch.nonzero(allowed[: logits.numel()]).flatten()
            prefix.probs = probs[prefix.allowed]
        weight = torch.zeros_like(logits, dtype=torch.float64)
        weight[prefix.allowed] = prefix.child_efg()
        for eos in self.eos_ids:  # a complete output has c = 1
            if eos < weight.numel() and weight[eos] > 0:
                weight[eos] = 1.0
        return logits + self.temperature * torch.log(weight).to(logits.dtype)

    def advance(self, tokens: list[int]) -> None:
        self.grammar.advance(tokens)
        for t in tokens:
            if t not in self.eos_ids:
                self.path.append(self.path[-1].children.setdefault(t, Prefix()))

    def rollback(self, n: int) -> None:
        self.grammar.rollback(n)
        del self.path[len(self.path) - n :]

    @property
    def finished(self) -> bool:
        # Never skip the last forward: ASAp must observe P(EOS | complete output), the end's own mass.
        return False

    @property
    def complete(self) -> bool:
        return self.grammar.complete


# -- exact distribution and KL (the paper's evaluation, for finite languages) ----------------------


@torch.inference_mode()
def exact_distribution(model, prompt: list[int], grammar: Grammar, temperature: float = 1.0,
                       max_tokens: int = 16) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """For a finite language: (P(w | w in L), plain constrained decoding's Q(w)) over every grammatical
    token sequence w (EOS not included), by enumerating the grammar's token trie with the matcher.
    One batched forward per depth. Raises if a sequence is longer than `max_tokens` (infinite language?)."""
    eos = grammar.eos_ids
    joint: dict[tuple, float] = {}  # w -> P(w, EOS)
    constrained: dict[tuple, float] = {}  # w -> Q(w)
    frontier: list[tuple[tuple, float, float]] = [((), 1.0, 1.0)]  # (prefix, P(prefix), Q(prefix))
    for _ in range(max_tokens + 1):
        if not frontier:
            break
        # breadth-first: every prefix in the frontier has the same length, so one batch per depth
        logits = model.module(input_ids=torch.tensor([prompt + list(w) for w, _, _ in frontier])).logits[:, -1]
        nxt = []
        for (w, p_w, q_w), row in zip(frontier, logits):
            grammar.begin(prompt)
            grammar.advance(list(w))
            allowed = grammar.allowed()[: row.numel()]
            probs = torch.softmax(row.double() / temperature, -1)
            mass = float(probs[allowed].sum())
            for t in torch.nonzero(allowed).flatten().tolist():
                if t in eos:
                    joint[w] = p_w * float(probs[t])
                    constrained[w] = q_w * float(probs[t]) / mass
                else:
                    nxt.append((w + (t,), p_w * float(probs[t]), q_w * float(probs[t]) / mass))
        frontier = nxt
    if frontier:
        raise InputError(f"the grammar's language has sequences longer than {max_tokens} tokens: enumerate a finite one")
    z = sum(joint.values())
    return {w: p / z for w, p in joint.items()}, constrained


def kl(exact: dict[tuple, float], counts: dict[tuple, int], smoothing: float = 0.5) -> float:
    """KL(exact || empirical), the empirical distribution smoothed by `smoothing` pseudo-counts per
    sequence of the (finite) support so a sequence not yet sampled does not make it infinite."""
    total = sum(counts.get(w, 0) for w in exact) + smoothing * len(exact)
    return sum(p * math.log(p / ((counts.get(w, 0) + smoothing) / total)) for w, p in exact.items() if p > 0)


def kl_curves(engine, prompt: list[int], samples: int, seed: int = 0, temperature: float = 1.0, progress=None,
              **grammar) -> dict:
    """KL(exact || empirical) after n = 1..samples samples, for plain constrained sampling and for ASAp,
    the same seeds for both. `grammar`: a finite language (e.g. choice=[...])."""
    from clmkit.guide.grammar import Grammar
    from clmkit.sampling import Sampling

    model = engine.model
    exact, constrained = exact_distribution(model, prompt, Grammar(model, **grammar), temperature)
    limit = sum(p * math.log(p / constrained[w]) for w, p in exact.items() if p > 0)
    checkpoints = sorted({n for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if n <= samples} | {samples})
    curves = {}
    for method, guide in (("constrained", Grammar(model, **grammar)), ("aligned", Aligned(model, **grammar))):
        counts: dict[tuple, int] = {}
        curve = []
        for i in range(1, samples + 1):
            out = engine.complete(prompt, max_new_tokens=64, guide=guide,
                                  sampling=Sampling(temperature=temperature, seed=seed + i))
            w = tuple(t for t in out.token_ids if t not in guide.eos_ids)
            counts[w] = counts.get(w, 0) + 1
            if i in checkpoints:
                curve.append(kl(exact, counts))
            if progress is not None:
                progress()
        curves[method] = curve
    decode = model.tokenizer.decode
    return {"n": checkpoints, **curves, "kl_exact_vs_constrained_law": limit, "sequences": len(exact),
            "exact": {decode(list(w)) + f" {list(w)}": p for w, p in sorted(exact.items(), key=lambda kv: -kv[1])[:20]},
            "constrained_law": {decode(list(w)) + f" {list(w)}": constrained[w]
                                for w, _ in sorted(exact.items(), key=lambda kv: -kv[1])[:20]}}
