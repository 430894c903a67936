"""Load test and concurrency benchmark for `clm serve`, against a server started in this process.

    clm bench serve-load          # 200 mixed requests from 16 clients: 5xx count, answers, memory
    clm bench serve-concurrency   # 8 streaming clients at once vs the same 8 one after another

Both bind a free loopback port, send a fixed number of requests (the load test also stops sending
after --seconds), and stop the server when done. The load mix includes streams the client abandons
after two events, malformed JSON, invalid values, unknown models and oversized bodies; every
well-formed request must get its answer and nothing may get a 5xx. Memory is the RSS of this
process (server and clients together), sampled every 0.25 s.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2
import numpy as np
import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

out = Console(soft_wrap=True)

PROMPTS = ["Why is the sky blue?", "Write a haiku about rain.", "List three prime numbers.", "What is a causal language model?",
           "Name a city in France.", "Explain recursion briefly.", "What is 12 times 7?", "Describe a cat in one sentence."]

# kind -> (share of the mix, well-formed: must be answered 2xx)
MIX = {"chat": (4, True), "chat-stream": (4, True), "completion": (2, True), "completion-stream-n2": (2, True),
       "logprobs": (1, True), "disconnect": (2, True), "malformed-json": (1, False), "invalid-value": (1, False),
       "unknown-model": (1, False), "oversized-body": (1, False)}


def one_request(http: httpx2.Client, base: str, model: str, kind: str, i: int, max_tokens: int) -> dict:
    """Send request `i` of kind `kind`; return what happened (status, tokens, seconds)."""
    prompt = PROMPTS[i % len(PROMPTS)]
    chat = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.7, "seed": i}
    start = time.perf_counter()
    status, events, line = 0, 0, ""
    if kind in ("chat", "logprobs", "invalid-value", "unknown-model"):
        body = dict(chat, **{"logprobs": True, "top_logprobs": 2} if kind == "logprobs" else {},
                    **{"temperature": -1} if kind == "invalid-value" else {}, **{"model": "no-such-model"} if kind == "unknown-model" else {})
        status = http.post(f"{base}/v1/chat/completions", json=body).status_code
    elif kind == "completion":
        status = http.post(f"{base}/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "seed": i}).status_code
    elif kind in ("chat-stream", "completion-stream-n2", "disconnect"):
        url, body = f"{base}/v1/chat/completions", dict(chat, stream=True)
        if kind == "completion-stream-n2":
            url, body = f"{base}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens, "n": 2, "stream": True, "seed": i}
        if kind == "disconnect":
            body["max_tokens"] = max_tokens * 8  # long: the client leaves long before the end
        with http.stream("POST", url, json=body) as r:
            status = r.status_code
            for text in r.iter_lines():
                if text.startswith("data: "):
                    events, line = events + 1, text
                if kind == "disconnect" and events >= 2:
                    break  # leaving the block closes the connection mid-stream
        if kind != "disconnect" and events and line != "data: [DONE]":
            status = -1  # a stream that ended without [DONE]
    elif kind == "malformed-json":
        status = http.post(f"{base}/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}).status_code
    elif kind == "oversized-body":
        big = dict(chat, messages=[{"role": "user", "content": "x" * (1 << 20)}])
        status = http.post(f"{base}/v1/chat/completions", content=json.dumps(big).encode(), headers={"content-type": "application/json"}).status_code
    return {"kind": kind, "status": status, "seconds": time.perf_counter() - start, "events": events}


def run_mix(base: str, model: str, requests: int, clients: int, max_tokens: int, seconds: float, seed: int,
            on_done=lambda: None) -> list[dict]:
    """`requests` requests of the MIX from `clients` threads; stops sending after `seconds`."""
    rng = random.Random(seed)
    kinds = [k for k, (share, _) in MIX.items() for _ in range(share)]
    plan = [rng.choice(kinds) for _ in range(requests)]
    results: list[dict] = []
    lock, next_i = threading.Lock(), iter(range(requests))
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx2.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                try:
                    result = one_request(http, base, model, plan[i], i, max_tokens)
                except httpx2.HTTPError as e:  # the server dropped the connection: counted as unanswered
                    result = {"kind": plan[i], "status": 0, "seconds": 0.0, "events": 0, "error": f"{type(e).__name__}: {e}"}
                with lock:
                    results.append(result)
                on_done()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summarize(results: list[dict]) -> dict:
    well = [r for r in results if MIX[r["kind"]][1]]
    return {
        "requests": len(results),
        "status_counts": dict(Counter(str(r["status"]) for r in results)),
        "server_errors_5xx": sum(r["status"] >= 500 for r in results),
        "well_formed": len(well),
        "well_formed_answered_2xx": sum(200 <= r["status"] < 300 for r in well),
        "malformed_answered_4xx": sum(400 <= r["status"] < 500 for r in results if not MIX[r["kind"]][1]),
        "unanswered": sum(r["status"] <= 0 for r in results),
        "by_kind": {k: dict(Counter(str(r["status"]) for r in results if r["kind"] == k)) for k in MIX},
        "latency_p50_s": _pct([r["seconds"] for r in well], 50),
        "latency_p95_s": _pct([r["seconds"] for r in well], 95),
    }


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


class MemorySampler:
    """RSS of this process every `period` seconds, in a thread."""

    def __init__(self, period: float = 0.25):
        self.period, self.samples, self.stop_flag = period, [], threading.Event()
        self.proc, self.t0 = psutil.Process(), time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            self.samples.append((time.monotonic() - self.t0, self.proc.memory_info().rss / 2**20))
            self.stop_flag.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()


def _load(model_name: str, backend: str):
    from clmkit.models import load

    return load(model_name, backend=backend)


def run_load(model_name: str, backend: str, requests: int, clients: int, max_tokens: int, seconds: float, seed: int,
             output: Path) -> dict:
    from clmkit.server.app import create_app, running

    model = _load(model_name, backend)
    with running(create_app(model)) as base:
        run_mix(base, model.name, 2 * clients, clients, max_tokens, seconds, seed + 1)  # warm-up: allocator, caches
        with MemorySampler() as memory, Progress(console=out, transient=True) as progress:
            bar = progress.add_task(f"load: {requests} requests, {clients} clients", total=requests)
            start = time.perf_counter()
            results = run_mix(base, model.name, requests, clients, max_tokens, seconds, seed, lambda: progress.advance(bar))
            wall = time.perf_counter() - start
        metrics = httpx2.get(base + "/metrics").text
    rss = [mb for _, mb in memory.samples]
    half = len(rss) // 2
    summary = summarize(results)
    summary.update(
        wall_s=wall, clients=clients, max_tokens=max_tokens, model=model.name,
        rss_mb_start=rss[0], rss_mb_end=rss[-1], rss_mb_peak=max(rss),
        rss_mb_first_half_max=max(rss[: max(half, 1)]), rss_mb_second_half_max=max(rss[half:]),
        cancelled_sequences=_metric(metrics, "clm_cancelled_sequences_total"),
        backend=model.runner().name,
        command=f"clm bench serve-load --model {model_name} --backend {backend} --requests {requests} --clients {clients} "
                f"--max-tokens {max_tokens} --seconds {seconds:g} --seed {seed}",
        machine="shared, loaded 2-core machine (other engineers' jobs running)",
    )
    table = Table(title=f"clm serve load test · {model.name}")
    for col in ("requests", "5xx", "well-formed answered", "malformed -> 4xx", "unanswered", "p50 s", "p95 s", "RSS MB start/peak/end"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["requests"]), str(summary["server_errors_5xx"]),
                  f"{summary['well_formed_answered_2xx']}/{summary['well_formed']}",
                  f"{summary['malformed_answered_4xx']}/{summary['requests'] - summary['well_formed']}",
                  str(summary["unanswered"]), f"{summary['latency_p50_s']:.2f}", f"{summary['latency_p95_s']:.2f}",
                  f"{summary['rss_mb_start']:.0f}/{summary['rss_mb_peak']:.0f}/{summary['rss_mb_end']:.0f}")
    out.print(table)
    _write(output, {"summary": summary, "memory_samples": memory.samples, "results": results})
    _plot_memory(memory.samples, _img_dir(output) / "server_load_memory.png", summary["command"])
    return summary


def _metric(text: str, name: str) -> float:
    return float(next((line.split()[-1] for line in text.splitlines() if line.startswith(name)), "nan"))


def stream_one(client, model: str, prompt: str, max_tokens: int, start: float) -> dict:
    """One streaming chat request with the openai client: time to first token and tokens."""
    first = None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    tokens = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft_s": first, "tokens": tokens, "done_s": time.perf_counter() - start}


def run_concurrency(model_name: str, backend: str, clients: int, max_tokens: int, output: Path) -> dict:
    """Sequential, concurrent with batched steps, concurrent interleaved (no batching), sequential again."""
    import openai

    from clmkit.server.app import ServerConfig, create_app, running

    model = _load(model_name, backend)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    rows = {}
    with running(create_app(model)) as batched, running(create_app(model, config=ServerConfig(batching=False))) as interleaved:
        for mode, base in (("sequential", batched), ("concurrent, batched", batched),
                           ("concurrent, interleaved", interleaved), ("sequential again", batched)):
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
            stream_one(client, model.name, prompts[0], 4, time.perf_counter())  # warm-up
            start = time.perf_counter()
            if mode.startswith("sequential"):  # twice: drift on a shared machine shows as a difference
                runs = [stream_one(client, model.name, p, max_tokens, time.perf_counter()) for p in prompts]
            else:
                runs = [None] * clients
                barrier = threading.Barrier(clients)

                def go(i, client=client):
                    barrier.wait()
                    runs[i] = stream_one(client, model.name, prompts[i], max_tokens, start)

                threads = [threading.Thread(target=go, args=(i,)) for i in range(clients)]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            wall = time.perf_counter() - start
            ttft = [r["ttft_s"] for r in runs]
            # As if all requests had arrived at t = 0: sequentially, request k also waits for the k - 1 before it.
            waited = [sum(r["done_s"] for r in runs[:k]) + runs[k]["ttft_s"] for k in range(clients)] \
                if mode.startswith("sequential") else ttft
            tokens = sum(r["tokens"] for r in runs)
            rows[mode] = {"requests": clients, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
                          "ttft_p50_s": _pct(ttft, 50), "ttft_p95_s": _pct(ttft, 95), "ttft_s": ttft,
                          "arrived_together_ttft_p50_s": _pct(waited, 50), "arrived_together_ttft_p95_s": _pct(waited, 95)}
    command = f"clm bench serve-concurrency --model {model_name} --backend {backend} --clients {clients} --max-tokens {max_tokens}"
    table = Table(title=f"{clients} streaming clients · {model.name} · {max_tokens} tokens each (greedy, ignore_eos)")
    for col in ("mode", "tokens", "wall s", "tokens/s", "TTFT p50 s", "TTFT p95 s", "all-at-once TTFT p50 / p95 s"):
        table.add_column(col, justify="right")
    for mode, r in rows.items():
        table.add_row(mode, str(r["tokens"]), f"{r['wall_s']:.1f}", f"{r['tokens_per_s']:.1f}", f"{r['ttft_p50_s']:.2f}",
                      f"{r['ttft_p95_s']:.2f}", f"{r['arrived_together_ttft_p50_s']:.2f} / {r['arrived_together_ttft_p95_s']:.2f}")
    out.print(table)
    out.print(command, highlight=False)
    result = {"model": model.name, "backend": model.runner().name, "clients": clients, "max_tokens": max_tokens,
              "rows": rows, "command": command,
              "machine": "shared, loaded 2-core machine (other engineers' jobs running)"}
    _write(output, result)
    _plot_concurrency(rows, _img_dir(output) / "server_concurrency.png", command)
    return result


def _img_dir(output: Path) -> Path:
    """docs/results/x.json -> docs/img/; anywhere else: beside the JSON."""
    return output.parent.parent / "img" if output.parent.name == "results" else output.parent


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    out.print(f"results: {path}", highlight=False)


def _plot_memory(samples, path: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([t for t, _ in samples], [mb for _, mb in samples])
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("clm serve under load: process memory", fontsize=10)
    fig.text(0.01, 0.01, command, fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.print(f"plot: {path}", highlight=False)


def _plot_concurrency(rows: dict, path: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    modes = list(rows)
    labels = [m.replace(", ", ",\n").replace(" again", "\nagain") for m in modes]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    x = np.arange(len(modes))
    a.bar(x, [rows[m]["tokens_per_s"] for m in modes])
    a.set_xticks(x, labels)
    a.set_ylabel("total tokens/s")
    b.bar(x - 0.2, [rows[m]["arrived_together_ttft_p50_s"] for m in modes], 0.4, label="p50")
    b.bar(x + 0.2, [rows[m]["arrived_together_ttft_p95_s"] for m in modes], 0.4, label="p95")
    b.set_xticks(x, labels)
    b.set_ylabel("time to first token (s),\nall requests arriving at t = 0")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{rows[modes[0]]['requests']} streaming requests: concurrent vs one after another", fontsize=10)
    fig.text(0.01, 0.01, command, fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.print(f"plot: {path}", highlight=False)
