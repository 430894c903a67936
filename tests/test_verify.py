"""The acceptance rule alone: greedy walk, and losslessness of recursive rejection sampling.

Target "model": the first token ~ P_ROOT; the token after any draft node ~ P_CHILD. Each sampling
test draws 20,000 verdicts on a 6-token vocabulary (3 root children + 1 grandchild) and checks by
chi-square at significance 1e-3 that (a) the first committed token ~ P_ROOT and (b) the token
committed at the first child, whenever the walk reaches it, ~ P_CHILD. Treating siblings drawn
without replacement as i.i.d. (the classic bug) gives p ~ 0 on the same test (last test).
"""

import pytest
import torch

from clmkit.tree import Draw, TokenTree
from clmkit.verify import verify_greedy, verify_sampling
from tests.stats import ALPHA, chisquare_pvalue

V = 6
TRIALS = 20_000
P_ROOT = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10])
Q_ROOT = torch.tensor([0.30, 0.05, 0.25, 0.10, 0.10, 0.20])
P_CHILD = torch.tensor([0.10, 0.10, 0.40, 0.15, 0.05, 0.20])
Q_CHILD = torch.tensor([0.25, 0.15, 0.10, 0.20, 0.20, 0.10])
PROBS = torch.stack([P_ROOT, P_CHILD, P_CHILD, P_CHILD, P_CHILD])
Q = torch.stack([Q_ROOT, Q_CHILD, Q_ROOT, Q_ROOT, Q_ROOT])  # q row per node: what its children came from


def test_greedy_walk():
    tree = TokenTree(torch.tensor([0, 3, 4, 1, 2]), torch.tensor([-1, 0, 0, 2, 2]))
    logits = torch.full((5, V), -1.0)
    logits[0, 4] = 1  # root -> 4 (node 2)
    logits[2, 2] = 1  # node 2 -> 2 (node 4)
    logits[4, 5] = 1  # bonus 5
    v = verify_greedy(tree, logits)
    assert v.path == [0, 2, 4] and v.tokens == [4, 2, 5] and v.accepted == 2


def draw_children(draw: Draw, g: torch.Generator) -> list[int]:
    if draw is Draw.DETERMINISTIC:
        return [1, 4, 2, 2]  # fixed drafts: root children 1, 4, 2; grandchild 2
    if draw is Draw.IID:
        kids = torch.multinomial(Q_ROOT, 3, replacement=True, generator=g).tolist()
    else:  # Gumbel-top-k = sampling without replacement
        gumbel = -torch.log(-torch.log(torch.rand(V, generator=g)))
        kids = torch.topk(torch.log(Q_ROOT) + gumbel, 3).indices.tolist()
    return kids + [int(torch.multinomial(Q_CHILD, 1, generator=g))]


def run(draw: Draw, declared: Draw | None = None):
    g = torch.Generator().manual_seed(123)
    trees: dict[tuple, TokenTree] = {}
    first, at_child = torch.zeros(V), torch.zeros(V)
    for _ in range(TRIALS):
        kids = tuple(draw_children(draw, g))
        if kids not in trees:
            trees[kids] = TokenTree(torch.tensor([0, *kids]), torch.tensor([-1, 0, 0, 0, 1]), draw=declared or draw,
                                    q=None if draw is Draw.DETERMINISTIC else Q)
        v = verify_sampling(trees[kids], PROBS, g)
        first[v.tokens[0]] += 1
        if v.path[1:2] == [1]:  # the walk reached node 1: what it committed next
            at_child[v.tokens[1]] += 1
    return first, at_child


@pytest.mark.parametrize("draw", list(Draw))
def test_sampling_is_lossless(draw):
    first, at_child = run(draw)
    assert at_child.sum() > 1000  # the second level is really exercised
    assert chisquare_pvalue(first, P_ROOT) > ALPHA
    assert chisquare_pvalue(at_child, P_CHILD) > ALPHA


def test_wrong_q_for_without_replacement_is_detected():
    first, _ = run(Draw.WITHOUT_REPLACEMENT, declared=Draw.IID)
    assert chisquare_pvalue(first, P_ROOT) < ALPHA
