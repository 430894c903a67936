import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clmkit.engine import Engine


def hf_greedy(model, ids, n):
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.module.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.lists(st.integers(1, 319), min_size=1, max_size=40), n=st.integers(1, 48))
def test_greedy_identical_to_hf_generate(tiny_models, arch, prompt, n):
    model = tiny_models[arch]
    got = Engine(model).complete(prompt, max_new_tokens=n)
    want = hf_greedy(model, prompt, n)
    assert got.token_ids == want
    assert got.finish_reason == ("stop" if want and want[-1] == 0 and len(want) <= n else "length")


def test_stops_on_eos_and_budget(tiny_llama):
    engine = Engine(tiny_llama)
    out = engine.complete([5, 6, 7], max_new_tokens=30)
    eos = tiny_llama.eos_token_ids
    if out.finish_reason == "stop":
        assert out.token_ids[-1] in eos and not any(t in eos for t in out.token_ids[:-1])
    else:
        assert len(out.token_ids) == 30
    assert out.stats.new_tokens == len(out.token_ids) and out.stats.prompt_tokens == 3


def test_ignore_eos_runs_to_budget(tiny_llama):
    out = Engine(tiny_llama).complete([5, 6, 7], max_new_tokens=60, ignore_eos=True)
    assert len(out.token_ids) == 60 and out.finish_reason == "length"


def test_stream_chunks_concatenate_to_completion(tiny_llama):
    engine = Engine(tiny_llama)
    chunks = list(engine.generate("hello world", max_new_tokens=40, ignore_eos=True))
    full = engine.complete("hello world", max_new_tokens=40, ignore_eos=True)
    assert "".join(c.text for c in chunks) == full.text
    assert [t for c in chunks for t in c.token_ids] == full.token_ids
    assert chunks[-1].finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
    assert full.text == tiny_llama.tokenizer.decode(full.token_ids, skip_special_tokens=True)
    s = full.stats
    assert s.ttft_s > 0 and s.target_forwards == 39 and s.mean_accepted == 1.0


def test_chat_template_is_applied(tiny_llama):
    engine = Engine(tiny_llama)
    ids = engine.encode("hello", chat=True)
    assert tiny_llama.tokenizer.decode(ids) == "<|user|>hello<|end|><|assistant|>"
    assert engine.encode("hello", chat=False) == tiny_llama.tokenizer("hello")["input_ids"]


def test_seeded_sampling_is_reproducible(tiny_llama):
    engine = Engine(tiny_llama)
    a = engine.complete([5, 6], max_new_tokens=30, temperature=1.0, seed=7, ignore_eos=True)
    b = engine.complete([5, 6], max_new_tokens=30, temperature=1.0, seed=7, ignore_eos=True)
    c = engine.complete([5, 6], max_new_tokens=30, temperature=1.0, seed=8, ignore_eos=True)
    assert a.token_ids == b.token_ids != c.token_ids
