"""The torch backend's kernels against the HF module they were made from (the oracle)."""

import pytest
import torch

from clmkit.backends import make_backend
from clmkit.backends.kernels import KERNELS, PackedLinear, micro_benchmark, with_kernel
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


def test_auto_picks_a_measured_kernel_and_shares_weights(tiny_llama):
    times = micro_benchmark(tiny_llama.module, budget_s=0.1)
    assert set(times) == {"hf", "onednn"} and all(t > 0 for t in times.values())
    module, kernel = with_kernel(tiny_llama.module, "auto")
    assert kernel in KERNELS
    if kernel == "onednn":  # a structural copy: the embedding is the same tensor, not a copy
        assert module.get_input_embeddings().weight is tiny_llama.module.get_input_embeddings().weight
    with pytest.raises(InputError, match="unknown torch kernel"):
        with_kernel(tiny_llama.module, "fast")


def test_hidden_states_match_hf(tiny_llama):
    seq = make_backend("torch", tiny_llama.module).sequence(16)
    seq.prefill([5, 6, 7], hidden=True)
    with torch.inference_mode():
        want = tiny_llama.module(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True).hidden_states
    assert len(seq.hidden_states) == len(want)
    assert torch.allclose(seq.hidden_states[-1], want[-1][0], atol=1e-5)
