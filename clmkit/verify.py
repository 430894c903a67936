"""Accept a path of a TokenTree from the target's logits at every node.

Greedy: follow the children that equal the target's argmax; the argmax at the last accepted node
is the bonus token. Output is then token-identical to plain greedy decoding.

Sampling: recursive rejection sampling over the tree (multi-candidate speculative sampling).
At node n with target distribution r = P[n], try the children in draw order:
    accept child x with probability min(1, r[x] / q[x]);
    on rejection r <- normalise(max(r - q, 0)) and try the next child;
when no child is accepted (or n is a leaf), the bonus token is drawn from r.
The q used for a child depends on how the children were drawn (TokenTree.draw):
    deterministic        one-hot of the child's token
    iid                  the draft distribution at n
    without-replacement  the draft distribution at n with earlier siblings' tokens zeroed, renormalised
Each case makes the accepted token at every level distributed exactly as r (see docs/verification.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.sampling import Sampling, sample, target_probs
from clmkit.tree import Draw, TokenTree


@dataclass
class Verdict:
    path: list[int]  # accepted node indices, root first
    tokens: list[int]  # the accepted draft tokens, then the bonus token

    @property
    def accepted(self) -> int:
        """Draft tokens accepted (the bonus token not counted)."""
        return len(self.path) - 1


def verify_greedy(tree: TokenTree, logits: torch.Tensor) -> Verdict:
    best = logits.argmax(-1).tolist()
    tokens = tree.tokens.tolist()
    node, path = 0, [0]
    while True:
        nxt = next((c for c in tree.children[node] if tokens[c] == best[node]), None)
        if nxt is None:
            break
        node = nxt
        path.append(node)
    return Verdict(path, [tokens[i] for i in path[1:]] + [best[node]])


def _residual(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    res = (r - q).clamp_(min=0)
    total = res.sum()
    # total == 0 means r <= q everywhere, i.e. r == q: every draw was accepted, so this is unreachable
    # in exact arithmetic; keep r rather than divide by zero under rounding.
    return res / total if total > 0 else r


def verify_sampling(tree: TokenTree, probs: torch.Tensor, generator: torch.Generator) -> Verdict:
    """probs: [n, vocab] target distributions (after temperature/top-k/top-p) at every node."""
    tokens = tree.tokens.tolist()
    node, path = 0, [0]
    while True:
        r = probs[node]
        accepted = None
        q_node = tree.q[node] if tree.q is not None and tree.draw is not Draw.DETERMINISTIC else None
        drawn: list[int] = []  # earlier siblings' tokens, for sampling without replacement
        for child in tree.children[node]:
            x = tokens[child]
            if tree.draw is Draw.DETERMINISTIC:
                q = torch.zeros_like(r)
                q[x] = 1.0
            elif tree.draw is Draw.IID:
                q = q_node
            else:
                q = q_node.clone()
                q[drawn] = 0.0
                q = q / q.sum()
            drawn.append(x)
            ratio = float(r[x]) / max(float(q[x]), 1e-30)
            if float(torch.rand((), generator=generator)) < min(1.0, ratio):
                accepted = child
                break
            r = _residual(r, q)
        if accepted is None:
            return Verdict(path, [tokens[i] for i in path[1:]] + [sample(r, generator)])
        node = accepted
        path.append(node)


def verify(tree: TokenTree, logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> Verdict:
    if sampling.greedy:
        return verify_greedy(tree, logits)
    return verify_sampling(tree, target_probs(logits, sampling), generator)
