"""Batched decoding: every row equals its own unbatched run (torch backend, tiny models)."""

import pytest

from clmkit.engine import Engine
from clmkit.errors import InputError

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20], [30, 31, 32, 33, 34, 35]]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_rows_identical_to_unbatched(tiny_models, arch):
    engine = Engine(tiny_models[arch])
    budgets = [30, 12, 25, 1]
    want = [engine.complete(p, max_new_tokens=n) for p, n in zip(PROMPTS, budgets)]
    dec = engine.batch_decoder()
    ids = [dec.add(p, max_new_tokens=n) for p, n in zip(PROMPTS, budgets)]
    got = {i: [] for i in ids}
    finish = {}
    while dec.active:
        for rid, chunk in dec.step():
            got[rid].extend(chunk.token_ids)
            if chunk.finish_reason:
                finish[rid] = chunk.finish_reason
    for rid, w in zip(ids, want):
        assert got[rid] == w.token_ids and finish[rid] == w.finish_reason


def test_rows_join_and_leave_between_steps(tiny_llama):
    """Continuous batching: a row added mid-flight (longer prompt: the others shift right) and a row
    cancelled mid-flight leave the others' outputs unchanged."""
    engine = Engine(tiny_llama)
    want = [engine.complete(p, max_new_tokens=20, ignore_eos=True).token_ids for p in PROMPTS]
    dec = engine.batch_decoder()
    got: dict[int, list[int]] = {}
    first = dec.add(PROMPTS[0], max_new_tokens=20, ignore_eos=True)
    doomed = dec.add(PROMPTS[3], max_new_tokens=20, ignore_eos=True)
    late = None
    for step in range(40):
        if step == 5:
            late = dec.add(PROMPTS[1], max_new_tokens=20, ignore_eos=True)
        if step == 8:
            dec.cancel(doomed)
        for rid, chunk in dec.step():
            got.setdefault(rid, []).extend(chunk.token_ids)
        if not dec.active:
            break
    assert got[first] == want[0] and got[late] == want[1]
    assert got[doomed] == want[3][: len(got[doomed])] and len(got[doomed]) < 20


def test_generate_batch_stops_and_seeded_sampling(tiny_llama, tokenizer):
    engine = Engine(tiny_llama)
    texts = ["hello world", "the quick brown fox", "1 2 3"]
    want = [engine.complete(t, max_new_tokens=24, temperature=1.0, seed=3, stop=["o"], ignore_eos=True) for t in texts]
    got = engine.complete_batch(texts, max_new_tokens=24, temperature=1.0, seed=3, stop=["o"], ignore_eos=True)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.finish_reason for g in got] == [w.finish_reason for w in want]
    with pytest.raises(InputError):
        list(engine.generate_batch([]))
