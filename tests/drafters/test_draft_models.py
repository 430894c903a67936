"""The draft-model drafters `draft`, `dyspec`, `rsd` and their shared runner DraftLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clmkit.drafters import make_drafter
from clmkit.drafters._draft_lm import DraftLM, self_draft_module
from clmkit.engine import Engine
from clmkit.errors import InputError, ModelLoadError
from clmkit.models import Model
from clmkit.sampling import Sampling
from tests.conftest import make_module, make_tokenizer
from tests.drafters.harness import assert_greedy_parity, assert_sampling_lossless

DRAFTERS = {
    "draft": {"gamma": 3},
    "dyspec": {"budget": 6},
    "rsd-c": {"variant": "c", "branching": "2,2,1"},
    "rsd-s": {"variant": "s", "beam_width": 3, "depth": 3},
}
# Depth-2 trees for the 20,000-step distribution tests: the harness checks the first two committed
# tokens, and shallow trees keep the number of distinct token paths (model calls) small. RSD-S is the
# harder case for losslessness (how many children a node keeps is random); RSD-C with its default
# options is also run through the same harness by tests/drafters/test_all_drafters.py.
SAMPLING = {
    "draft": {"gamma": 2},
    "dyspec": {"budget": 4, "max_depth": 2},
    "rsd-s": {"variant": "s", "beam_width": 2, "depth": 2},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, model, draft_model="self:1", **extra):
    options = dict(DRAFTERS[name], **extra)
    return make_drafter(name.split("-")[0], model, draft_model=draft_model, **options)


def layers(n: int) -> dict:
    """make_module overrides for an n-layer model (qwen2 keeps one layer type per layer)."""
    return {"num_hidden_layers": n, "layer_types": ["full_attention"] * n}


def tiny(arch: str, tokenizer, seed: int = 0, **overrides) -> Model:
    return Model(name=f"tiny-{arch}-{seed}", module=make_module(arch, len(tokenizer), seed=seed, **overrides),
                 tokenizer=tokenizer, source=Path("."), chat=False)


# -- bad input -------------------------------------------------------------------------------------


def test_draft_model_with_another_tokenizer_is_a_clear_error(tiny_llama, tmp_path):
    # a different vocabulary size
    other = make_tokenizer(vocab_size=300)
    with pytest.raises(InputError, match="different tokenizers"):
        make_drafter("draft", tiny_llama, draft_model=tiny("llama", other))
    # same size, two tokens' ids swapped
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tiny_llama.tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    vocab[by_id[100]], vocab[by_id[200]] = 200, 100
    shuffled = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>")
    assert len(shuffled) == len(tiny_llama.tokenizer)
    with pytest.raises(InputError, match="different tokenizers"):
        make_drafter("dyspec", tiny_llama, draft_model=tiny("llama", shuffled))
    # given as a HF directory, the way `--draft-model DIR` passes it
    module = make_module("gpt2", len(other))
    module.save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="different tokenizers"):
        make_drafter("rsd", tiny_llama, draft_model=str(tmp_path))


@pytest.mark.parametrize("options", [
    {"gamma": 0}, {"gamma": -2}, {"gamma": "x"},
])
def test_bad_gamma(tiny_llama, options):
    with pytest.raises(InputError):
        make_drafter("draft", tiny_llama, **options)


@pytest.mark.parametrize("name,options", [
    ("dyspec", {"budget": 0}), ("dyspec", {"budget": -1}), ("dyspec", {"width": 0}),
    ("rsd", {"branching": "2,0"}), ("rsd", {"branching": ""}), ("rsd", {"variant": "x"}),
    ("rsd", {"variant": "s", "beam_width": 0}), ("rsd", {"variant": "s", "depth": 0}),
    ("draft", {"draft_model": "self:0"}), ("draft", {"draft_model": "self:3"}), ("draft", {"draft_model": "self:two"}),
    ("draft", {"draft_model": "/no/such/model"}), ("draft", {"no_such_option": 1}),
])
def test_bad_options(tiny_llama, name, options):
    with pytest.raises(ModelLoadError if options.get("draft_model") == "/no/such/model" else InputError):
        make_drafter(name, tiny_llama, **options)


# -- self:N ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_self_draft_is_the_first_layers_norm_and_head(tokenizer, arch):
    """self:N == a model built with N layers holding the target's first N layers' weights."""
    target = make_module(arch, len(tokenizer), **layers(3))
    before = target(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits
    for n in (1, 2, 3):
        view = self_draft_module(target, n)
        reference = make_module(arch, len(tokenizer), seed=99, **layers(n))
        missing, _ = reference.load_state_dict(target.state_dict(), strict=False)
        assert not [k for k in missing if "rotary" not in k]
        ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
        with torch.inference_mode():
            torch.testing.assert_close(view(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        # shares the target's weights, copies none
        shared = {p.data_ptr() for p in target.parameters()}
        assert all(p.data_ptr() in shared for p in view.parameters())
    # the target itself is untouched
    torch.testing.assert_close(target(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits, before)


def _sequential(module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return module(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tree_feed_matches_decoding_each_path(tokenizer, arch):
    target = tiny(arch, tokenizer, **layers(3))
    lm = DraftLM(target, "self:2")
    context = [5, 9, 14, 3, 27, 8]
    root_logits = lm.start(context)
    torch.testing.assert_close(root_logits, _sequential(lm.module, context), rtol=1e-4, atol=1e-4)
    a, b = lm.add(0, 40), lm.add(0, 41)
    out = dict(zip([a, b], lm.feed([a, b])))  # two siblings: a tree mask
    c, d = lm.add(a, 42), lm.add(b, 43)
    e = lm.add(b, 44)
    out.update(zip([c, d, e], lm.feed([c, d, e])))
    f = lm.add(d, 45)
    out.update(zip([f], lm.feed([f])))
    for node, logits in out.items():
        path = [lm.tokens[k] for k in lm.tree().path_to(node)]
        torch.testing.assert_close(logits, _sequential(lm.module, context + path[1:]), rtol=1e-4, atol=1e-4)


def _kv(cache, n):
    return [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in cache.layers]


def test_cache_sync_after_partial_acceptance(tiny_llama):
    lm = DraftLM(tiny_llama, "self:1")
    context = [5, 6, 7, 8, 9, 10, 11]
    lm.start(context)

    def check(new_context, fed_expected):
        fed = lm.fed_tokens
        logits = lm.start(new_context)
        assert lm.fed_tokens - fed == fed_expected
        fresh = DraftLM(tiny_llama, "self:1")
        torch.testing.assert_close(logits, fresh.start(new_context), rtol=1e-5, atol=1e-5)
        assert lm.cache.length == fresh.cache.length == len(new_context)
        for (k1, v1), (k2, v2) in zip(_kv(lm.cache, len(new_context)), _kv(fresh.cache, len(new_context))):
            torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)

    # a chain: 2 of 3 draft tokens accepted, then a bonus token: only the bonus is fed
    n1 = lm.add(0, 20)
    lm.feed([n1])
    n2 = lm.add(n1, 21)
    lm.feed([n2])
    lm.add(n2, 22)
    context = context + [20, 21, 30]
    check(context, 1)
    # a tree: the second sibling's branch accepted (non-contiguous slots are kept, not recomputed)
    a, b = lm.add(0, 40), lm.add(0, 41)
    lm.feed([a, b])
    c = lm.add(b, 42)
    lm.feed([c])
    context = context + [41, 42, 50]
    check(context, 1)
    # nothing accepted: the bonus token and the root are fed
    a = lm.add(0, 60)
    lm.feed([a])
    context = context + [61]
    check(context, 1)
    # the same context again (the harness does this): the root is fed again
    check(context, 1)
    # a different text: everything after the common prefix is fed again
    check(context[:4] + [70, 71, 72], 3)


# -- greedy parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DRAFTERS))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_parity(tiny_models, name, arch):
    model = tiny_models[arch]
    drafter = build(name, model)
    for prompt in ([5, 6, 7, 8] * 3, [9, 40, 41, 9, 40, 77]):
        assert_greedy_parity(model, drafter, prompt, max_new_tokens=32)


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_parity_with_a_separate_draft_model(tiny_llama, tokenizer, name):
    """A draft model of another architecture with the same tokenizer."""
    drafter = build(name, tiny_llama, draft_model=tiny("qwen2", tokenizer, seed=3))
    out = assert_greedy_parity(tiny_llama, drafter, [5, 6, 7, 8, 9], max_new_tokens=32)
    assert out.stats.draft_tokens > 0


def test_a_draft_equal_to_the_target_is_always_accepted(tiny_llama):
    """self:N with N = all layers is the target itself: every greedy chain token is accepted."""
    drafter = make_drafter("draft", tiny_llama, draft_model="self:2", gamma=4)
    out = assert_greedy_parity(tiny_llama, drafter, [5, 6, 7, 8, 9], max_new_tokens=41)
    assert out.stats.acceptance_rate == 1.0 and out.stats.mean_accepted == 5.0


# -- sampling: lossless ----------------------------------------------------------------------------


def test_conditioned_gumbel_keeps_each_parents_order_and_max():
    import numpy as np

    from clmkit.drafters.rsd import conditioned_gumbel

    rng = np.random.default_rng(0)
    g = np.log(rng.dirichlet(np.ones(50), size=3)) - np.log(-np.log(rng.random((3, 50))))
    g[1, 7] = -np.inf  # a token the draft excludes
    parent = np.array([-0.5, -3.0, -20.0])
    out = conditioned_gumbel(parent, g)
    np.testing.assert_allclose(out.max(-1), parent, rtol=0, atol=1e-9)
    assert out[1, 7] == -np.inf and np.isfinite(np.delete(out[1], 7)).all()
    for row in range(3):  # monotone within a parent: same order of children
        finite = np.isfinite(g[row])
        assert (np.argsort(out[row][finite]) == np.argsort(g[row][finite])).all()
    assert (out <= parent[:, None] + 1e-12).all()


@pytest.mark.parametrize("name", list(SAMPLING))
def test_sampling_is_lossless(memo_pair, name):
    target, draft = memo_pair
    drafter = make_drafter(name.split("-")[0], target, draft_model=draft, **SAMPLING[name])
    context = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    assert_sampling_lossless(target, drafter, context, Sampling(temperature=0.8, top_k=40, seed=0), trials=20_000)


def test_memo_stand_in_is_faithful(memo_pair, tiny_llama):
    """The memoised target gives the real model's greedy output through the engine, with a tree drafter."""
    target, draft = memo_pair
    real = assert_greedy_parity(tiny_llama, build("rsd-s", tiny_llama, draft_model="self:1"), [5, 6, 7, 8], 24)
    memo = assert_greedy_parity(target, build("rsd-s", target, draft_model=draft), [5, 6, 7, 8], 24)
    assert real.token_ids == memo.token_ids


def test_sampling_is_reproducible_with_a_seed(tiny_llama):
    outs = []
    for _ in range(2):
        drafter = build("dyspec", tiny_llama)
        out = Engine(tiny_llama, drafter=drafter).complete([5, 6, 7, 8], max_new_tokens=24, temperature=0.9, seed=11)
        outs.append(out.token_ids)
    assert outs[0] == outs[1]
