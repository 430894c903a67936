import pytest
import torch

from clmkit.cache import KVCache
from clmkit.hf_adapter import Forward
from clmkit.tree import TokenTree, tree_attention_mask


def test_structure():
    t = TokenTree(torch.tensor([9, 1, 2, 3, 4]), torch.tensor([-1, 0, 0, 1, 1]))
    assert t.depth.tolist() == [0, 1, 1, 2, 2]
    assert t.children == [[1, 2], [3, 4], [], [], []]
    assert t.path_to(4) == [0, 1, 4]
    assert t.ancestors[4].tolist() == [True, True, False, False, True]
    assert not t.is_chain and TokenTree.chain(9, [1, 2]).is_chain


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-1, 0, 3, 0]])
def test_invalid_parents_rejected(parents):
    with pytest.raises(ValueError):
        TokenTree(torch.arange(len(parents)), torch.tensor(parents))


def test_mask_values_and_sliding_window():
    t = TokenTree(torch.tensor([9, 1, 2]), torch.tensor([-1, 0, 0]))
    m = tree_attention_mask(t, prefix_length=3, dtype=torch.float32)
    assert m.shape == (1, 1, 3, 6)
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 1]]
    assert m.min() == torch.finfo(torch.float32).min
    # window 2: node at position 4 (depth 1) sees positions 3 and 4 only
    w = (tree_attention_mask(t, 3, torch.float32, sliding_window=2)[0, 0] == 0).int().tolist()
    assert w == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 1]]


def test_tree_logits_equal_sequential_paths(tiny_models):
    """Each node's logits in one tree forward equal decoding its path token by token."""
    for model in tiny_models.values():
        fwd = Forward(model.module)
        prefix = [3, 14, 15, 92, 65]
        tokens = torch.tensor([35, 89, 79, 32, 38, 46, 26])
        parents = torch.tensor([-1, 0, 0, 1, 1, 2, 5])
        tree = TokenTree(tokens, parents)
        cache = KVCache(2)
        with torch.inference_mode():
            fwd(torch.tensor([prefix]), torch.arange(len(prefix))[None], cache)
            logits = fwd.tree(tree, cache)
            for node in range(len(tree)):
                path = [int(tokens[i]) for i in tree.path_to(node)]
                seq = model.module(input_ids=torch.tensor([prefix + path])).logits[0, -1]
                torch.testing.assert_close(logits[node], seq, atol=1e-4, rtol=1e-4, msg=f"{model.name} node {node}")


def test_tree_on_sliding_window_layers(tokenizer):
    """Hybrid full/sliding models get one mask per layer type; a window shorter than the context matters."""
    from tests.conftest import make_module

    module = make_module("qwen2", len(tokenizer), use_sliding_window=True, sliding_window=4, max_window_layers=1,
                         layer_types=["full_attention", "sliding_attention"])
    fwd = Forward(module)
    assert fwd.sliding_window == 4
    prefix = [3, 14, 15, 92, 65, 35, 89, 79, 32]
    tree = TokenTree(torch.tensor([38, 46, 26, 43]), torch.tensor([-1, 0, 0, 2]))
    cache = KVCache(2)
    with torch.inference_mode():
        fwd(torch.tensor([prefix]), torch.arange(len(prefix))[None], cache)
        logits = fwd.tree(tree, cache)
        for node in range(len(tree)):
            path = [int(tree.tokens[i]) for i in tree.path_to(node)]
            seq = module(input_ids=torch.tensor([prefix + path])).logits[0, -1]
            torch.testing.assert_close(logits[node], seq, atol=1e-4, rtol=1e-4)
