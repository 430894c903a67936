"""The server through the official `openai` client, checked against the in-process engine."""

from __future__ import annotations

import json

import httpx2
import pytest
import torch

from clmkit.engine import Engine
from clmkit.tree import TokenTree
from tests.server.conftest import openai, serving

HELLO = [{"role": "user", "content": "hello world, the quick brown fox"}]


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return Engine(tiny_llama)


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    assert httpx2.get(served.url + "/health").json()["status"] == "ok"


def test_chat_is_the_engines_greedy_output_with_usage(client, engine):
    want = engine.complete(HELLO, max_new_tokens=12, temperature=0.0)
    got = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=12, temperature=0)
    assert got.choices[0].message.content == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == len(engine.encode(HELLO))
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_completions_take_text_ids_and_lists(client, engine):
    ids = engine.encode("the quick brown", chat=False)
    want = [engine.complete(p, max_new_tokens=6, temperature=0.0, chat=False).text for p in ("the quick brown", "hello")]
    got = client.completions.create(model="tiny-llama", prompt=["the quick brown", "hello"], max_tokens=6, temperature=0)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == want
    by_ids = client.completions.create(model="tiny-llama", prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == want[0]


def test_stream_chunks_add_up_and_end_with_done_and_usage(served, client):
    full = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert all(c.usage is None for c in chunks[:-1])
    body = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 4, "stream": True, "seed": 3}
    raw = httpx2.post(served.url + "/v1/completions", json=body, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    same = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=4, seed=3)  # temperature 1 both
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == same.choices[0].text


def test_n_and_seed_reproduce_the_engine(client, engine):
    kw = dict(model="tiny-llama", prompt="hello world", max_tokens=10, temperature=1.0, seed=7, n=3)
    first = client.completions.create(**kw)
    again = client.completions.create(**kw)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    # choice j is seed 7 + j: the same draws the engine makes in-process
    assert texts == [engine.complete("hello world", max_new_tokens=10, temperature=1.0, seed=7 + j, chat=False).text
                     for j in range(3)]
    assert len(set(texts)) > 1  # n choices are different draws
    other = client.completions.create(**{**kw, "seed": 8, "n": 1})
    assert other.choices[0].text == texts[1]  # negative control of the seed mapping: 8 is choice 1 of seed 7


def test_stop_cuts_before_the_stop_string(client, engine):
    text = engine.complete(HELLO, max_new_tokens=24, temperature=0.0, ignore_eos=True).text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].strip() and text[i : i + 2] not in text[:i])
    got = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=24, temperature=0, stop=[stop],
                                         extra_body={"ignore_eos": True})
    assert got.choices[0].message.content == text[: text.index(stop)]
    assert got.choices[0].finish_reason == "stop"


def test_logprobs_are_the_models(client, engine, tiny_llama):
    got = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=8, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = got.choices[0].logprobs.content
    assert len(content) == got.usage.completion_tokens
    ids = engine.encode(HELLO) + engine.complete(HELLO, max_new_tokens=8, temperature=0.0).token_ids
    with torch.no_grad():
        logp = tiny_llama.module(torch.tensor([ids])).logits[0].log_softmax(-1)
    prompt_len = got.usage.prompt_tokens
    for i, entry in enumerate(content):
        row = logp[prompt_len - 1 + i]
        assert entry.logprob == pytest.approx(float(row[ids[prompt_len + i]]), abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(float(row.max()), abs=1e-4)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the top token
    completion = client.completions.create(model="tiny-llama", prompt="hello", max_tokens=5, temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5


class OracleDrafter:
    """Drafts the known greedy continuation plus one wrong token: accepted and rejected drafts every step."""

    name, max_nodes = "oracle", 5

    def __init__(self, script: list[int], vocab: int):
        self.script, self.vocab = script, vocab

    def begin(self, prompt_ids, sampling):
        pass

    def propose(self, context):
        n = len(context)
        known = self.script[n : n + 3] if self.script[:n] == context else []
        wrong = [(self.script[n + len(known)] + 1) % self.vocab] if known and n + len(known) < len(self.script) else []
        return TokenTree.chain(context[-1], known + wrong)

    def observe(self, tree, logits, verdict):
        pass


def test_drafter_is_invisible_except_in_metrics(tiny_llama, client, engine):
    prompts = [HELLO, [{"role": "user", "content": "1 2 3 4 5 6 7 8 9 10"}]]
    kw = dict(model="tiny-llama", max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    plain = [client.chat.completions.create(messages=m, **kw).choices[0].message.content for m in prompts]
    script = engine.encode(prompts[1]) + engine.complete(prompts[1], max_new_tokens=40, temperature=0.0, ignore_eos=True).token_ids
    for drafter in ("lookup", lambda: OracleDrafter(script, tiny_llama.vocab_size)):
        with serving(tiny_llama, drafter=drafter) as s:
            fast = s.client()
            drafted = [fast.chat.completions.create(messages=m, **kw).choices[0].message.content for m in prompts]
            streamed = "".join(c.choices[0].delta.content or "" for c in fast.chat.completions.create(
                messages=prompts[1], stream=True, **kw))
            metrics = httpx2.get(s.url + "/metrics").text
        assert drafted == plain and streamed == plain[1]
    mean = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("clm_mean_accepted_tokens_per_step")))
    assert mean > 1.5  # the oracle's drafts were accepted: fewer forwards, same text


def test_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    got = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(got.choices[0].message.content)["answer"] in ("yes", "no")
    assert got.choices[0].finish_reason == "stop"
    free = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=40, temperature=0)
    with pytest.raises(ValueError):  # negative control: the same request without the schema is not JSON
        json.loads(free.choices[0].message.content)


def test_concurrent_requests_interleave(served, client):
    """A request arriving while a long one decodes gets its answer before the long one ends."""
    import threading

    order = []
    long = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=200, temperature=0, stream=True,
                                          extra_body={"ignore_eos": True})
    next(iter(long))  # the long request is decoding

    def short():
        client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=2, temperature=0)
        order.append("short")

    t = threading.Thread(target=short)
    t.start()
    for _ in long:
        pass
    order.append("long")
    t.join()
    assert order == ["short", "long"]
