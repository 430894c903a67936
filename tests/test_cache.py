import torch

from clmkit.cache import KVCache
from clmkit.hf_adapter import Forward
from clmkit.tree import TokenTree


def full_logits(module, ids):
    with torch.inference_mode():
        return module(input_ids=torch.tensor([ids])).logits[0]


def test_append_grow_crop_keep_on_raw_tensors():
    cache = KVCache(num_layers=1, capacity=2)
    layer = cache.layers[0]
    k = torch.arange(5.0).view(1, 1, 5, 1)
    cache.update(k, -k, 0)
    assert cache.length == 5 and layer.capacity >= 5  # grew past the hint
    cache.update(torch.tensor([[[[5.0], [6.0]]]]), torch.tensor([[[[-5.0], [-6.0]]]]), 0)
    assert layer.keys.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6]
    cache.keep(torch.tensor([1, 3]), start=3)  # keep slots 0..2, then 4 and 6
    assert layer.keys.flatten().tolist() == [0, 1, 2, 4, 6]
    assert layer.values.flatten().tolist() == [0, -1, -2, -4, -6]
    cache.keep(torch.tensor([0, 1]), start=2)  # already in place: a crop
    assert layer.keys.flatten().tolist() == [0, 1, 2, 4]
    cache.crop_to(1)
    assert cache.length == 1 and layer.keys.flatten().tolist() == [0]


def test_keep_rejects_unsorted_indices():
    cache = KVCache(num_layers=1)
    cache.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2), 0)
    try:
        cache.keep(torch.tensor([2, 1]), start=0)
    except ValueError:
        return
    raise AssertionError("unsorted indices accepted")


def test_keep_after_tree_matches_recompute(tiny_models):
    """Forward a tree, keep one branch, continue: logits equal a from-scratch run on prefix + branch."""
    for model in tiny_models.values():
        fwd = Forward(model.module)
        prefix = [5, 17, 33, 8, 91, 12]
        cache = KVCache(2, capacity=8)
        with torch.inference_mode():
            fwd(torch.tensor([prefix[:-1]]), torch.arange(len(prefix) - 1)[None], cache)
            # root = prefix[-1]; two branches: (40, 41) and (50, 51, 52)
            tree = TokenTree(torch.tensor([prefix[-1], 40, 50, 41, 51, 52]), torch.tensor([-1, 0, 0, 1, 2, 4]))
            start = cache.length
            fwd.tree(tree, cache)
            cache.keep(torch.tensor([0, 2, 4]), start=start)  # root, 50, 51
            nxt = 77
            got = fwd(torch.tensor([[52, nxt]]), torch.tensor([[start + 3, start + 4]]), cache)
        want = full_logits(model.module, prefix + [50, 51, 52, nxt])[-2:]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
