"""Batched generation for the generating strategies: B items decoded together, greedy output unchanged.

Strategies are ordinary functions that call `model.complete()` one or more times (cot: reasoning,
then the answer; coin: up to ~19 calls). Rather than rewriting each as a state machine, every item
runs in its own worker thread, and the workers share one decoder:

    run_concurrently(items, BatchedModel(model, 8), work)     8 items in flight, 8 worker threads
        worker:   model.complete(prompt, ...)  -> enqueue the call, wait for its text
        decoder:  one thread owns engine.batch_decoder() (clmkit/batching.py, continuous batching):
                  between steps it adds the calls that arrived (each prompt's prefill runs then),
                  then one batched forward advances every running row by a token; a row that stops
                  (EOS, stop string, budget) hands its text back to its worker and leaves the batch

A call joins at the next step rather than waiting for a full batch, so an item in its second call
(cot's answer) decodes alongside items still in their first. Greedy rows are token-identical to
`Engine.complete` on the prompt alone, up to kernel rounding at near-ties (clmkit/batching.py);
tests/reasoning/test_batch.py checks records equal the serial run's on tiny models, and
docs/reasoning.md counts identical items on the embedded model.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from clmkit.reasoning.lm import _cut_at_stop


@dataclass
class _Call:
    prompt: str
    max_new_tokens: int
    stop: list[str]
    text: str = ""
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchedModel:
    """Wraps a `ClmkitModel`: `complete()` calls from worker threads share one batch decoder.

    Use inside `run_concurrently` (or `with model.decoding():`), which runs the decoder thread."""

    inner: object
    batch_size: int = 8
    rows_per_step: list[int] = field(default_factory=list)  # batch size of every decode step, for reports

    def __post_init__(self):
        self.name = self.inner.name
        self._cv = threading.Condition()
        self._inbox: list[_Call] = []
        self._closed = True  # no decoder thread until `decoding()`

    def loglikelihood(self, prompt: str, choices: list[str]):
        return self.inner.loglikelihood(prompt, choices)  # one forward per item already; not batched

    def complete(self, prompt: str, *, max_new_tokens: int, stop: list[str] | None = None) -> str:
        call = _Call(prompt, max_new_tokens, list(stop or []))
        with self._cv:
            if self._closed:
                raise RuntimeError("BatchedModel.complete outside `decoding()`: no decoder is running")
            self._inbox.append(call)
            self._cv.notify_all()
            self._cv.wait_for(lambda: call.done)
        if call.error is not None:
            raise call.error
        return call.text

    @contextmanager
    def decoding(self):
        """Run the decoder thread for the duration of the block."""
        self._closed = False
        thread = threading.Thread(target=self._decode, name="clm-batch-decoder", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            thread.join()

    def _finish(self, call: _Call) -> None:
        with self._cv:
            call.done = True
            self._cv.notify_all()

    def _decode(self) -> None:
        decoder = self.inner.engine.batch_decoder()
        running: dict[int, _Call] = {}  # decoder row id -> its call
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._inbox or running or self._closed)
                if self._closed and not self._inbox and not running:
                    return
                arrived, self._inbox = self._inbox, []
            for call in arrived:  # a prompt too long for the context fails its own call only
                try:
                    rid = decoder.add(call.prompt, max_new_tokens=call.max_new_tokens, stop=call.stop,
                                      chat=self.inner.chat, temperature=0.0)
                except Exception as e:  # noqa: BLE001
                    call.error = e
                    self._finish(call)
                else:
                    running[rid] = call
            if not running:
                continue
            self.rows_per_step.append(len(running))
            try:
                chunks = decoder.step()
            except BaseException as e:  # noqa: BLE001 — every waiting worker must wake up
                for rid, call in running.items():
                    decoder.cancel(rid)
                    call.error = e
                    self._finish(call)
                running.clear()
                continue
            for rid, chunk in chunks:
                call = running[rid]
                call.text += chunk.text
                if chunk.finish_reason:
                    del running[rid]
                    call.text = _cut_at_stop(call.text, call.stop)  # as ClmkitModel.complete does
                    self._finish(call)


def run_each(items: list, model, work: Callable[[object, object], dict], batch_size: int) -> Iterator[dict]:
    """`work(model, item)` for every item: batched `batch_size` at a time when `model` is a clmkit model
    (it has an engine; results in completion order), else one after another (endpoints batch on their
    side; results in order)."""
    if batch_size > 1 and hasattr(model, "engine"):
        yield from run_concurrently(items, BatchedModel(model, batch_size), work)
    else:
        for item in items:
            yield work(model, item)


def run_concurrently(items: list, model: BatchedModel, work: Callable[[object, object], dict]) -> Iterator[dict]:
    """`work(model, item)` for every item on `model.batch_size` threads; results in completion order."""
    with model.decoding(), ThreadPoolExecutor(max_workers=model.batch_size, thread_name_prefix="clm-item") as pool:
        futures = [pool.submit(work, model, item) for item in items]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
