"""Batched generation: items decoded together give the records of the serial, unbatched run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from clmkit.reasoning.batch import BatchedModel, run_concurrently
from clmkit.reasoning.evaluate import batched, run, run_item
from clmkit.reasoning.lm import FakeModel
from clmkit.tasks.base import TaskItem
from tests.conftest import loaded_text_model

PROMPTS = ["the quick brown fox", "hello", "def add(a, b):\n    return", "1 2 3 4 5 6 7 8 9 10 11",
           "héllo wörld — naïve", "general kenobi hello there the lazy dog jumps over the quick brown"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_concurrent_calls_equal_unbatched_complete(tiny_models, arch):
    model = loaded_text_model(tiny_models[arch])
    calls = list(zip(PROMPTS, [12, 3, 20, 1, 9, 16], [[], [" the"], ["\n"], [], ["o"], ["dog"]]))
    wrapped = BatchedModel(model, batch_size=len(calls))
    with wrapped.decoding(), ThreadPoolExecutor(len(calls)) as pool:  # rows join and leave at different steps
        got = list(pool.map(lambda c: wrapped.complete(c[0], max_new_tokens=c[1], stop=c[2]), calls))
    assert got == [model.complete(p, max_new_tokens=m, stop=s) for p, m, s in calls]
    assert max(wrapped.rows_per_step) > 1  # really decoded together


def items(n: int = 7) -> list[TaskItem]:
    return [TaskItem(f"i{k}", f"{PROMPTS[k % len(PROMPTS)]} {k}?", "yes", ["yes", "no"],
                     {"answer_format": "yes/no", "task": "toy"}) for k in range(n)]


@pytest.mark.parametrize("strategy", ["direct", "cot"])
def test_batched_strategy_run_equals_the_serial_run(tiny_llama, tmp_path, strategy, monkeypatch):
    import clmkit.reasoning.strategies as strategies

    monkeypatch.setattr(strategies, "REASONING_TOKENS", 12)  # keep the tiny model's CoT short
    model = loaded_text_model(tiny_llama)
    serial = run(items(), model, strategy, tmp_path / "serial.jsonl", task="toy")
    wrapped = BatchedModel(model, batch_size=3)
    executor = lambda todo: run_concurrently(todo, wrapped, lambda m, item: run_item(m, strategy, item))  # noqa: E731
    together = run(items(), model, strategy, tmp_path / "batched.jsonl", task="toy", executor=executor)
    assert max(wrapped.rows_per_step) == 3  # the calls really were decoded together
    keys = ("prediction", "score", "output", "steps")
    by_id = {r["id"]: r for r in together}
    assert sorted(by_id) == sorted(r["id"] for r in serial)
    for r in serial:
        assert {k: r[k] for k in keys} == {k: by_id[r["id"]][k] for k in keys}


def test_a_bad_call_fails_alone(tiny_llama):
    wrapped = BatchedModel(loaded_text_model(tiny_llama), batch_size=4)
    prompts = ["hello", "the quick", "x " * 400, "def add"]  # the third exceeds the 256-token context

    def work(model, prompt):
        try:
            return {"id": prompt, "text": model.complete(prompt, max_new_tokens=4)}
        except Exception as e:  # noqa: BLE001
            return {"id": prompt, "error": type(e).__name__}

    out = {r["id"]: r for r in run_concurrently(prompts, wrapped, work)}
    assert out["x " * 400]["error"] == "InputError"
    for p in ("hello", "the quick", "def add"):
        assert out[p]["text"] == wrapped.inner.complete(p, max_new_tokens=4)


def test_complete_outside_a_decoding_block_is_an_error(tiny_llama):
    with pytest.raises(RuntimeError, match="no decoder is running"):
        BatchedModel(loaded_text_model(tiny_llama)).complete("hello", max_new_tokens=2)


def test_batched_falls_back_to_serial_for_endpoints_and_batch_size_one(tiny_llama):
    for model, size in ((FakeModel(["yes"]), 8), (loaded_text_model(tiny_llama), 1)):
        records = list(batched(model, "direct", size)(items(2)))
        assert [r["id"] for r in records] == ["i0", "i1"]  # serial: in order


@pytest.mark.embedded
def test_embedded_model_batched_calls_equal_unbatched(embedded_model):
    model = loaded_text_model(embedded_model, chat=None)
    prompts = ["Is the sky blue? Answer with yes or no.", "What is 2 + 2?"]
    wrapped = BatchedModel(model, batch_size=2)
    with wrapped.decoding(), ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda p: wrapped.complete(p, max_new_tokens=4), prompts))
    assert got == [model.complete(p, max_new_tokens=4) for p in prompts]
    assert max(wrapped.rows_per_step) == 2
