"""ADED (`adaptive`): the adaptive n-gram store, the MCTS draft tree, losslessness, save/load."""

import gzip
import json

import pytest
import torch

from clmkit.drafters import make_drafter
from clmkit.drafters.adaptive import AdaptiveDrafter, NGramStore
from clmkit.errors import InputError
from clmkit.sampling import Sampling
from clmkit.verify import Verdict
from tests.drafters.harness import assert_greedy_parity, assert_sampling_lossless

# -- the store ---------------------------------------------------------------------------------------


def test_store_counts_backoff_and_pruning():
    s = NGramStore(n=3, keep=2, decay=1.0, alpha=0.0)
    s.add_sequence([1, 2, 3, 1, 2, 3, 1, 2, 4])
    # tri-gram context (1, 2) was followed by 3, 3, 4
    assert dict(s.candidates((1, 2), 5)) == pytest.approx({3: 2 / 3, 4: 1 / 3})
    # an unseen 2-token context backs off to its last token
    assert [t for t, _ in s.candidates((9, 2), 5)] == [3, 4]
    assert s.candidates((9, 9), 5) == []
    # pruning keeps the `keep` heaviest
    for t in (5, 5, 6):
        s.add([7, 8], t)
    s.add([7, 8], 9)  # 5:2, 6:1, 9:1 -> one of the weight-1 entries is evicted
    row = s.tables[2][(7, 8)]
    assert len(row) == 2 and row[5] == 2


def test_store_decay_favours_recent_behaviour():
    s = NGramStore(n=3, keep=12, decay=0.5, alpha=0.0)
    for _ in range(4):
        s.add([1, 2], 3)
    s.add([1, 2], 4)
    s.add([1, 2], 4)
    # plain counts would say 3 (4 vs 2); with decay the recent 4 wins
    assert s.candidates((1, 2), 1)[0][0] == 4
    # smoothing: a context seen once is not certain
    t = NGramStore(alpha=1.0)
    t.add([5, 6], 7)
    assert t.candidates((5, 6), 1) == [(7, 0.5)]


def test_observe_learns_committed_tokens_and_target_feedback(tiny_llama):
    d = AdaptiveDrafter(tiny_llama, decay=1.0, learn_from_prompt=False)
    d.begin([10, 11, 12], Sampling())
    assert len(d.store) == 0
    tree = d.propose([10, 11, 12])
    assert len(tree) == 1  # nothing known yet: plain decoding
    d.observe(tree, torch.zeros(1, tiny_llama.vocab_size), Verdict([0], [13]))
    assert d.store.candidates((11, 12), 1)[0][0] == 13
    # a 3-node tree: root 13 -> 14 (accepted) and 13 -> 15 (rejected; the target said 99 after it)
    d.store.add([12, 13], 14)
    d.store.add([12, 13], 15)
    tree = d.propose([10, 11, 12, 13])
    toks = tree.tokens.tolist()
    assert sorted(toks[1:]) == [14, 15] and tree.parents.tolist() == [-1, 0, 0]
    logits = torch.zeros(3, tiny_llama.vocab_size)
    rejected = toks.index(15)
    logits[rejected, 99] = 5.0
    accepted = toks.index(14)
    d.observe(tree, logits, Verdict([0, accepted], [14, 16]))
    assert d.store.candidates((13, 14), 1)[0][0] == 16  # committed bonus token
    assert d.store.candidates((13, 15), 1)[0][0] == 99  # the target's word after the rejected draft


def test_store_persists_across_requests(tiny_llama):
    d = make_drafter("adaptive", tiny_llama)
    d.begin([1, 2, 3, 4, 1, 2, 3], Sampling())
    size = len(d.store)
    d.begin([50, 60], Sampling())
    assert len(d.store) > size and d.store.candidates((2, 3), 1)[0][0] == 4  # hot start


# -- the draft tree ----------------------------------------------------------------------------------


def _rich_drafter(model, **options):
    d = AdaptiveDrafter(model, learn_from_prompt=False, **options)
    g = torch.Generator().manual_seed(0)
    d.store.add_sequence(torch.randint(1, 12, (3000,), generator=g).tolist())  # many branches everywhere
    return d


@pytest.mark.parametrize("search", ["mcts", "best-first"])
@pytest.mark.parametrize("max_nodes,max_depth", [(2, 1), (8, 3), (16, 8), (40, 5)])
def test_tree_valid_and_within_budget(tiny_llama, search, max_nodes, max_depth):
    d = _rich_drafter(tiny_llama, max_nodes=max_nodes, max_depth=max_depth, min_prob=0.0, search=search)
    for context in ([3, 4], [1, 2, 3, 4, 5], [7]):
        tree = d.propose(context)
        parents = tree.parents.tolist()
        assert parents[0] == -1 and int(tree.tokens[0]) == context[-1]
        assert all(0 <= p < i for i, p in enumerate(parents[1:], start=1))  # parents before children
        assert len(tree) <= max_nodes == d.max_nodes
        assert int(tree.depth.max()) <= max_depth
        assert len(tree) == max_nodes  # the rich store fills the budget
        # siblings are distinct tokens (a duplicate would waste a node)
        for kids in tree.children:
            toks = [int(tree.tokens[c]) for c in kids]
            assert len(toks) == len(set(toks))


def test_mcts_explores_siblings_and_depth(tiny_llama):
    d = _rich_drafter(tiny_llama, max_nodes=24, max_depth=6, min_prob=0.0)
    tree = d.propose([1, 2])
    assert len(tree.children[0]) >= 2  # exploration: more than the single most likely token
    assert int(tree.depth.max()) >= 2  # exploitation: likely paths are followed deeper


def test_min_prob_prunes_unlikely_nodes(tiny_llama):
    d = _rich_drafter(tiny_llama, max_nodes=32, min_prob=0.5)
    assert len(d.propose([1, 2])) == 1  # uniform-ish store: no continuation is likely enough


def test_bad_options(tiny_llama):
    for bad in (dict(max_nodes=0), dict(max_nodes=-3), dict(budget=0), dict(n=1), dict(decay=0.0),
                dict(search="beam"), dict(min_prob=1.5), dict(max_depth=0)):
        with pytest.raises(InputError):
            make_drafter("adaptive", tiny_llama, **bad)


# -- losslessness ------------------------------------------------------------------------------------

PROMPTS = [
    [5, 6, 7, 8] * 4,
    [20, 21] * 6,
    [9, 40, 41, 9, 40],
    [100, 101, 102, 103, 104, 105, 100, 101, 102],
    [33, 34, 35, 36, 37, 38, 39, 60, 61, 62],
]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("search", ["mcts", "best-first"])
def test_greedy_parity_and_acceptance(tiny_models, arch, search):
    model = tiny_models[arch]
    drafter = make_drafter("adaptive", model, search=search)  # one drafter: later prompts start hot
    accepted = 0
    for prompt in PROMPTS:
        out = assert_greedy_parity(model, drafter, prompt, max_new_tokens=48)
        accepted += out.stats.accepted_tokens
        assert out.stats.draft_tokens <= out.stats.target_forwards * (drafter.max_nodes - 1)
    assert accepted > 0


def test_greedy_parity_other_orders_and_budgets(tiny_llama):
    for options in (dict(n=2), dict(n=4, max_nodes=24), dict(max_nodes=1), dict(min_prob=0.0, max_nodes=6)):
        drafter = make_drafter("adaptive", tiny_llama, **options)
        for prompt in PROMPTS[:3]:
            assert_greedy_parity(tiny_llama, drafter, prompt, max_new_tokens=32)


def test_sampling_lossless(memo_pair):
    # Low min_prob: the tree keeps uncertain branches, so rejections and residuals are exercised.
    target, _ = memo_pair
    drafter = make_drafter("adaptive", target, max_nodes=8, min_prob=0.02)
    context = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    assert_sampling_lossless(target, drafter, context, Sampling(temperature=1.0, seed=0), trials=20_000)


# -- save / load -------------------------------------------------------------------------------------


def test_save_load_roundtrip(tiny_llama, tmp_path):
    d = make_drafter("adaptive", tiny_llama)
    d.begin([1, 2, 3, 4, 1, 2, 3, 5, 9, 9, 9], Sampling())
    path = tmp_path / "store.json.gz"
    d.save(path)
    e = make_drafter("adaptive", tiny_llama, state=path)
    for a, b in zip(e.store.tables, d.store.tables):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-5)
    for ctx in ([1, 2, 3], [9, 9]):
        assert e.propose(ctx).tokens.tolist() == d.propose(ctx).tokens.tolist()


def test_load_rejects_corrupt_and_foreign_files(tiny_llama, tmp_path):
    d = make_drafter("adaptive", tiny_llama)
    with pytest.raises(InputError, match="not found"):
        d.load(tmp_path / "missing.gz")
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match="corrupt"):
        d.load(junk)
    text = tmp_path / "text.json"
    text.write_text("{not json")
    with pytest.raises(InputError, match="corrupt"):
        d.load(text)
    good = tmp_path / "good.gz"
    d.begin([1, 2, 3, 4], Sampling())
    d.save(good)
    data = json.loads(gzip.decompress(good.read_bytes()))
    for field, value in (("format", "other"), ("tables", [[[[1], [[10**9, 1.0]]]], []]), ("n", "x")):
        broken = dict(data, **{field: value})
        p = tmp_path / f"broken-{field}.gz"
        p.write_bytes(gzip.compress(json.dumps(broken).encode()))
        with pytest.raises(InputError):
            d.load(p)
    p = tmp_path / "other-vocab.gz"
    p.write_bytes(gzip.compress(json.dumps(dict(data, vocab_size=7)).encode()))
    with pytest.raises(InputError, match="vocabulary"):
        d.load(p)
