"""TokenTree.subtree: the helper the guide's pruning uses (clmkit/tree.py)."""

import pytest
import torch

from clmkit.tree import Draw, TokenTree


def test_subtree_reindexes_and_keeps_order():
    tree = TokenTree(torch.tensor([9, 1, 2, 3, 4, 5]), torch.tensor([-1, 0, 0, 1, 1, 2]))
    sub = tree.subtree([0, 1, 2, 4, 5])
    assert sub.tokens.tolist() == [9, 1, 2, 4, 5]
    assert sub.parents.tolist() == [-1, 0, 0, 1, 2]
    assert sub.children[0] == [1, 2] and sub.depth.tolist() == [0, 1, 1, 2, 2]
    assert bool(sub.ancestors[3, 1]) and not bool(sub.ancestors[3, 2])


def test_subtree_keeps_q_rows_and_draw():
    q = torch.rand(4, 7)
    tree = TokenTree(torch.tensor([0, 1, 2, 3]), torch.tensor([-1, 0, 0, 2]), draw=Draw.IID, q=q)
    sub = tree.subtree([0, 2, 3])
    assert sub.draw is Draw.IID and torch.equal(sub.q, q[[0, 2, 3]])


@pytest.mark.parametrize("keep", [[1, 2], [0, 3], [0, 2, 1], []])
def test_subtree_rejects_bad_selections(keep):
    tree = TokenTree(torch.tensor([9, 1, 2, 3]), torch.tensor([-1, 0, 0, 1]))
    with pytest.raises(ValueError):
        tree.subtree(keep)
