"""The torch backend's kernels against the HF module they were made from (the oracle)."""

import pytest
import torch

from clmkit.backends import make_backend
from clmkit.backends import kernels
from clmkit.backends.kernels import ROWS, DispatchLinear, PackedLinear, RowDispatch, auto_kernel, with_kernel
from clmkit.drafters import make_drafter
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.models import Model
from clmkit.tree import TokenTree
from tests.test_engine import hf_greedy

# fp32 oneDNN vs torch's GEMM: same products, different summation order. Measured on the tiny models
# max |diff| ~1e-5 on logits of magnitude ~10; bf16 weights are a different model (~1e-2 relative).
FP32_ATOL = 1e-4
BF16_RTOL = 0.05


def fast_model(model, kernel):
    return Model(model.name, model.module, model.tokenizer, model.source, model.chat,
                 backend=make_backend("torch", model.module, kernel=kernel))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_onednn_logits_match_hf_and_greedy_is_identical(tiny_models, arch):
    model = tiny_models[arch]
    backend = make_backend("torch", model.module, kernel="onednn")
    assert any(isinstance(m, PackedLinear) for m in backend.module.modules()) or arch == "gpt2"  # gpt2: Conv1D
    ids = [5, 9, 17, 33, 2, 8, 11]
    seq = backend.sequence(32)
    seq.prefill(ids[:3])
    tree = TokenTree(torch.tensor(ids[3:]), torch.tensor([-1, 0, 1, 1]))
    got = seq.tree(tree)
    with torch.inference_mode():
        want_chain = model.module(input_ids=torch.tensor([ids[:6]])).logits[0, 3:]  # root, then nodes 1, 2
        want_sib = model.module(input_ids=torch.tensor([ids[:5] + [ids[6]]])).logits[0, -1]  # node 3 (sibling of 2)
    assert torch.allclose(got[:3], want_chain, atol=FP32_ATOL)
    assert torch.allclose(got[3], want_sib, atol=FP32_ATOL)
    prompt = [3, 4, 5, 6]
    assert Engine(fast_model(model, "onednn")).complete(prompt, max_new_tokens=40).token_ids == hf_greedy(model, prompt, 40)


def test_bf16_kernel_is_close_but_not_claimed_exact(tiny_llama):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    backend = make_backend("torch", tiny_llama.module, kernel="onednn-bf16")
    seq = backend.sequence(16)
    got = seq.prefill([5, 6, 7, 8])
    with torch.inference_mode():
        want = tiny_llama.module(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[0, -1]
    assert (got - want).norm() / want.norm() < BF16_RTOL
    assert not torch.equal(got, want)  # it really runs in bf16 (otherwise the option does nothing)


def test_micro_benchmark_times_every_size_and_kernel(tiny_llama):
    module, label, dispatch = auto_kernel(tiny_llama.module, budget_s=0.1)
    assert sorted(dispatch.times) == list(ROWS) and all(set(t) == {"hf", "onednn"} for t in dispatch.times.values())
    assert all(s > 0 for t in dispatch.times.values() for s in t.values())
    assert label == dispatch.label() and label.startswith("auto: ")
    if module is not tiny_llama.module:  # a structural copy: the embedding is the same tensor
        assert module.get_input_embeddings().weight is tiny_llama.module.get_input_embeddings().weight
    with pytest.raises(InputError, match="unknown torch kernel"):
        with_kernel(tiny_llama.module, "fast")


def test_row_dispatch_follows_the_measurement_not_a_constant():
    hf_small = RowDispatch({1: {"hf": 1.0, "onednn": 2.0}, 4: {"hf": 3.0, "onednn": 2.5}, 16: {"hf": 9.0, "onednn": 4.0}})
    assert [hf_small.packed(n) for n in (1, 2, 3, 4, 5, 16, 500)] == [False, True, True, True, True, True, True]
    assert hf_small.label() == "auto: hf at 1 rows, onednn at 2+ rows"
    flipped = RowDispatch({1: {"hf": 2.0, "onednn": 1.0}, 4: {"hf": 2.0, "onednn": 3.0}, 16: {"hf": 1.0, "onednn": 4.0}})
    assert [flipped.packed(n) for n in (1, 2, 4, 16, 500)] == [True, False, False, False, False]
    assert flipped.label() == "auto: onednn at 1 rows, hf at 2+ rows"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_dispatch_routes_by_rows_and_greedy_stays_identical(tiny_models, arch, monkeypatch):
    """Plain steps (1 row) on torch's GEMM, trees and prefills (>= 2 rows) on oneDNN: each call really goes
    where the table says, and greedy output (plain and with a drafter's trees) equals HF generate."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    model = tiny_models[arch]
    table = RowDispatch({1: {"hf": 1.0, "onednn": 2.0}, 2: {"hf": 2.0, "onednn": 1.0}})
    monkeypatch.setattr(kernels, "micro_benchmark", lambda *a, **k: table.times)  # the "measurement"
    backend = make_backend("torch", model.module, kernel="auto")
    assert backend.kernel == "auto: hf at 1 rows, onednn at 2+ rows"
    calls = {"hf": 0, "onednn": 0}
    layers = [m for m in backend.module.modules() if isinstance(m, DispatchLinear)]
    for d in layers:
        d.linear.register_forward_hook(lambda *a: calls.__setitem__("hf", calls["hf"] + 1))
        d.fast.register_forward_hook(lambda *a: calls.__setitem__("onednn", calls["onednn"] + 1))
    fast = Model(model.name, model.module, model.tokenizer, model.source, model.chat, backend=backend)
    seq = backend.sequence(16)
    seq.prefill([3, 4, 5])  # 3 rows through the layers, then the lm_head on the last row only
    assert calls == {"hf": 1, "onednn": len(layers) - 1}
    seq.tree(TokenTree(torch.tensor([6, 7, 8]), torch.tensor([-1, 0, 0])))
    assert calls == {"hf": 1, "onednn": 2 * len(layers) - 1}
    seq.keep([0])
    seq.tree(TokenTree.root(7))
    assert calls == {"hf": 1 + len(layers), "onednn": 2 * len(layers) - 1}
    prompt = [3, 4, 5, 6, 3, 4, 5]
    want = hf_greedy(model, prompt, 40)
    assert Engine(fast).complete(prompt, max_new_tokens=40).token_ids == want
    drafted = Engine(fast).complete(prompt, max_new_tokens=40, drafter=make_drafter("lookup", fast))
    assert drafted.token_ids == want and drafted.stats.draft_tokens > 0


def test_hidden_states_match_hf(tiny_llama):
    seq = make_backend("torch", tiny_llama.module).sequence(16)
    seq.prefill([5, 6, 7], hidden=True)
    with torch.inference_mode():
        want = tiny_llama.module(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True).hidden_states
    assert len(seq.hidden_states) == len(want)
    assert torch.allclose(seq.hidden_states[-1], want[-1][0], atol=1e-5)
