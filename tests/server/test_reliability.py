"""Disconnects cancel generation, the engine keeps serving others, a bounded load leaves no 5xx."""

from __future__ import annotations

import time

from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from clmkit.engine import Engine
from clmkit.server.app import ServerConfig
from clmkit.server.loadtest import run_mix, summarize
from tests.server.conftest import serving


class SlowForward:
    """The engine's forward with a pause per call, so a 200-token generation outlasts the client."""

    def __init__(self, forward, pause: float):
        self.forward, self.pause = forward, pause
        self.batch_sizes: list[int] = []  # rows per batched step

    def __call__(self, *args, **kwargs):
        time.sleep(self.pause)
        return self.forward(*args, **kwargs)

    def tree(self, *args, **kwargs):
        time.sleep(self.pause)
        return self.forward.tree(*args, **kwargs)

    def batch(self, ids, *args, **kwargs):
        time.sleep(self.pause)
        self.batch_sizes.append(ids.shape[0])
        return self.forward.batch(ids, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.forward, name)


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def slow_engine(model, monkeypatch, pause: float) -> Engine:
    """An engine whose backend pauses per forward (restored after the test: backends are shared per model)."""
    engine = Engine(model)
    monkeypatch.setattr(engine.backend, "forward", SlowForward(engine.backend.forward, pause))
    return engine


def test_disconnect_mid_stream_stops_the_engine_spending_steps(tiny_llama, monkeypatch):
    engine = slow_engine(tiny_llama, monkeypatch, 0.01)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 200,
            "temperature": 0, "stream": True, "ignore_eos": True}
    with serving(engine) as s:
        with httpx2.Client(timeout=30) as http, http.stream("POST", s.url + "/v1/chat/completions", json=body) as r:
            events = 0
            for line in r.iter_lines():
                events += line.startswith("data: ")
                if events == 4:
                    [seq] = s.scheduler.active
                    break  # closing the response drops the connection mid-stream
        wait_until(lambda: not s.scheduler.active)
        steps = seq.steps
        time.sleep(0.3)
        assert seq.steps == steps < 60  # stopped well before its 200 tokens, and stays stopped
        assert seq.completion_tokens < 60
        metrics = httpx2.get(s.url + "/metrics").text
        assert 'clm_cancelled_sequences_total{model="tiny-llama"} 1' in metrics
        # the server keeps serving
        ok = httpx2.post(s.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_non_streaming_disconnect_cancels_too(tiny_llama, monkeypatch):
    engine = slow_engine(tiny_llama, monkeypatch, 0.01)
    body = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
    with serving(engine) as s:
        try:
            httpx2.post(s.url + "/v1/completions", json=body, timeout=0.3)
        except httpx2.TimeoutException:
            pass
        wait_until(lambda: 'clm_cancelled_sequences_total{model="tiny-llama"} 1' in httpx2.get(s.url + "/metrics").text)
        assert not s.scheduler.active


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_match_their_solo_runs(tiny_llama, batching, monkeypatch):
    """Four clients at once: each gets exactly what it gets alone; with batching they shared forwards."""
    engine = slow_engine(tiny_llama, monkeypatch, 0.002)
    slow = engine.backend.forward
    prompts = ["hello world", "the quick brown fox jumps", "1 2 3", "def add(a, b):"]
    lengths = [30, 12, 25, 40]
    want = [engine.complete(p, max_new_tokens=n, temperature=0.0, chat=False, ignore_eos=True).text for p, n in zip(prompts, lengths)]
    with serving(engine, config=ServerConfig(batching=batching)) as s:
        client = s.client()
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda pn: client.completions.create(
                model="tiny-llama", prompt=pn[0], max_tokens=pn[1], temperature=0, extra_body={"ignore_eos": True}).choices[0].text,
                zip(prompts, lengths)))
    assert got == want
    assert (max(slow.batch_sizes, default=0) > 1) == batching


def test_bounded_mixed_load_has_no_5xx(served):
    results = run_mix(served.url, "tiny-llama", requests=32, clients=8, max_tokens=8, seconds=60, seed=0)
    summary = summarize(results)
    assert summary["requests"] == 32
    assert summary["server_errors_5xx"] == 0 and summary["unanswered"] == 0
    assert summary["well_formed_answered_2xx"] == summary["well_formed"] > 0
    assert summary["malformed_answered_4xx"] == 32 - summary["well_formed"] > 0
    wait_until(lambda: not served.scheduler.active and not served.scheduler.waiting)


class BrokenDrafter:
    """Fails on its second proposal: a server-side bug in the middle of a generation."""

    name, max_nodes = "broken", 1

    def begin(self, prompt_ids, sampling):
        self.calls = 0

    def propose(self, context):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("drafter bug")
        from clmkit.tree import TokenTree

        return TokenTree.root(context[-1])

    def observe(self, tree, logits, verdict):
        pass


def test_a_failing_sequence_fails_its_request_only(tiny_llama):
    with serving(tiny_llama, drafter=BrokenDrafter) as s:
        body = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        r = httpx2.post(s.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        stream = httpx2.post(s.url + "/v1/completions", json={**body, "stream": True}, timeout=30)
        lines = [line for line in stream.text.split("\n") if line]
        assert '"server_error"' in lines[-2] and lines[-1] == "data: [DONE]"  # the error, then the end
        assert httpx2.get(s.url + "/health").json()["status"] == "ok"
        one = httpx2.post(s.url + "/v1/completions", json={**body, "max_tokens": 1}, timeout=30)
        assert one.status_code == 200  # one token needs no second proposal: the server still serves
