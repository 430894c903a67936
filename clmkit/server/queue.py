"""Requests -> one engine: a waiting queue, a set of active sequences, one engine thread.

Every choice of every request is a `Sequence`. The engine thread admits waiting sequences while
fewer than `max_active` are decoding, then runs `_step_all` over the active set again and again:

    loop:
        admit waiting sequences (up to max_active); start them (prefill)
        _step_all(active)      # every active sequence advances by one engine step
        hand each step's text/tokens to its request handler; retire finished or cancelled ones

`_step_all` is the one place that decides how active sequences share the engine:
- plain sequences are rows of one `BatchDecoder` (clmkit/batching.py): one batched target forward
  per step for all of them (dynamic batching: rows join and leave between steps);
- sequences with a drafter or a guide (which the batch decoder does not take) are `Engine.generate`
  iterators, advanced one after another within the same tick (interleaved: a new request still gets
  its first token after one tick, not after every earlier request has finished).
`batching=False` interleaves every sequence (the benchmark's comparison). A cancelled sequence (its
client went away) is dropped before the next step: the engine spends no further forwards on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from clmkit.drafters import Drafter
from clmkit.errors import ClmkitError
from clmkit.server.logprobs import Scorer, TokenScore
from clmkit.server.metrics import Metrics
from clmkit.server.schemas import ApiError

log = logging.getLogger("clmkit.server")


@dataclass
class Event:
    """One engine step's output for one sequence, as the request handler receives it."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    completion_tokens: int  # so far
    logprobs: list[TokenScore] | None = None
    error: Exception | None = None
    index: int = 0  # the choice this event belongs to (set by Sequence.push)


@dataclass
class Sequence:
    """One choice of one request: prompt ids, decoding options, and a channel back to its handler."""

    prompt_ids: list[int]
    options: dict  # Engine.generate keyword arguments: max_new_tokens, sampling, stop, ignore_eos
    loop: asyncio.AbstractEventLoop
    logprobs_k: int | None = None  # None: no logprobs
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # shared by a request's choices
    index: int = 0  # the choice's index in the response
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    steps: int = 0  # engine steps spent on this sequence (tests check cancellation with it)
    completion_tokens: int = 0
    chunks: object = None  # the Engine.generate iterator, once admitted (drafter, guide)
    row: int | None = None  # or its row in the scheduler's BatchDecoder (plain decoding)
    scorer: Scorer | None = None
    drafter: Drafter | None = None

    def push(self, event: Event) -> None:
        event.index = self.index
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def cancel(self) -> None:
        self.cancelled.set()


class DrafterPool:
    """One drafter per active sequence (drafters keep per-sequence state), reused after it finishes."""

    def __init__(self, factory: Callable[[], Drafter]):
        self.factory, self.idle = factory, [factory()]  # build one now: a bad drafter fails at startup

    def take(self) -> Drafter:
        return self.idle.pop() if self.idle else self.factory()

    def give(self, drafter: Drafter) -> None:
        self.idle.append(drafter)


class Scheduler:
    def __init__(self, engine, metrics: Metrics, drafters: DrafterPool | None = None, max_active: int = 8,
                 max_waiting: int = 256, batching: bool = True):
        self.engine, self.metrics, self.drafters = engine, metrics, drafters
        self.max_active, self.max_waiting = max_active, max_waiting
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        # Plain sequences share one batched forward per step when the engine can batch (clmkit/batching.py).
        self.batching = batching and hasattr(engine, "batch_decoder")
        self.decoder = None  # the BatchDecoder, made on first use
        self.rows: dict[int, Sequence] = {}  # decoder row id -> sequence
        self.cond = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        metrics.queue_depth = lambda: len(self.waiting)
        metrics.active = lambda: len(self.active)

    # -- called from the request handlers -------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="clmkit-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def submit(self, sequences: list[Sequence]) -> None:
        with self.cond:
            if self.stopping:
                raise ApiError(503, "the server is shutting down", type="server_error")
            if len(self.waiting) + len(sequences) > self.max_waiting:
                raise ApiError(429, f"the server is busy: {len(self.waiting)} sequences are waiting; retry later",
                               type="server_overloaded", code="queue_full")
            self.waiting.extend(sequences)
            self.cond.notify()

    # -- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.active and not self.waiting:
                    self.cond.wait()
                if self.stopping:
                    break
                admitted = []
                # Admit a burst at once (as vLLM does, up to max_active): its prefills run back to back,
                # then one step streams every first token. Admitting one per tick instead interleaves
                # prefills with batched steps: better median, worse tail TTFT (docs/server.md, measured).
                while self.waiting and len(self.active) + len(admitted) < self.max_active:
                    seq = self.waiting.popleft()
                    if not seq.cancelled.is_set():
                        admitted.append(seq)
            try:
                for seq in admitted:  # outside the lock: starting may run a prefill, submit() must not wait
                    self.active.append(seq)
                    self._start(seq)
                self._step_all()
            except Exception as e:  # noqa: BLE001 — a bug here must fail these requests, not stop the engine thread
                log.exception("engine step failed", exc_info=e)
                for seq in list(self.active):
                    self._retire(seq, error=e)
                self.decoder = None
        for seq in [*self.active, *self.waiting]:
            self._retire(seq, error=ApiError(503, "the server is shutting down", type="server_error"))

    def _batchable(self, seq: Sequence) -> bool:
        return self.batching and self.drafters is None and seq.options.get("guide") is None

    def _start(self, seq: Sequence) -> None:
        try:
            if self._batchable(seq):
                if self.decoder is None:
                    self.decoder = self.engine.batch_decoder()
                seq.row = self.decoder.add(seq.prompt_ids, **seq.options)  # runs its prefill now
                self.rows[seq.row] = seq
            else:
                seq.drafter = self.drafters.take() if self.drafters else None
                seq.chunks = self.engine.generate(seq.prompt_ids, drafter=seq.drafter, **seq.options)
            if seq.logprobs_k is not None:
                capacity = len(seq.prompt_ids) + seq.options["max_new_tokens"] + 1
                seq.scorer = Scorer(self.engine, seq.prompt_ids, seq.logprobs_k, capacity)
        except Exception as e:  # noqa: BLE001 — reported to this request; the server keeps serving
            self._retire(seq, error=e)

    def _step_all(self) -> None:
        """Advance every active sequence by one engine step; drop the cancelled ones first."""
        for seq in [s for s in self.active if s.cancelled.is_set()]:
            self._retire(seq, cancelled=True)
        for seq in [s for s in self.active if s.chunks is not None]:  # drafter / guide: one at a time
            try:
                chunk = next(seq.chunks)
            except Exception as e:  # noqa: BLE001
                self._retire(seq, error=e)
                continue
            self._deliver(seq, chunk)
        if self.rows:  # plain sequences: one batched forward for all of them
            try:
                stepped = self.decoder.step()
            except Exception as e:  # noqa: BLE001 — a failed batch fails its rows, not the server
                for seq in list(self.rows.values()):
                    self._retire(seq, error=e)
                self.decoder = None
                return
            for row, chunk in stepped:
                self._deliver(self.rows[row], chunk)

    def _deliver(self, seq: Sequence, chunk) -> None:
        seq.steps += 1
        try:
            scores = seq.scorer.score(chunk.token_ids, last=chunk.finish_reason is not None) if seq.scorer else None
        except Exception as e:  # noqa: BLE001
            self._retire(seq, error=e)
            return
        self.metrics.step(len(chunk.token_ids), seq.steps == 1, time.perf_counter() - seq.submitted)
        seq.completion_tokens = chunk.stats.new_tokens
        seq.push(Event(chunk.text, chunk.token_ids, chunk.finish_reason, seq.completion_tokens, scores))
        if chunk.finish_reason is not None:
            self._retire(seq, stats=chunk.stats)

    def _retire(self, seq: Sequence, stats=None, cancelled: bool = False, error: Exception | None = None) -> None:
        if seq in self.active:
            self.active.remove(seq)
        if seq.chunks is not None:
            seq.chunks.close()
        if seq.row is not None:
            self.rows.pop(seq.row, None)
            if self.decoder is not None:
                self.decoder.cancel(seq.row)  # a no-op for a row the decoder already finished
            seq.row = None
        if seq.scorer is not None:
            seq.scorer.close()
        seq.chunks = seq.scorer = None  # free the KV caches now, not when the handler lets go
        if seq.drafter is not None:
            self.drafters.give(seq.drafter)
            seq.drafter = None
        self.metrics.finished(len(seq.prompt_ids) if (stats or cancelled) else 0,
                              stats.target_forwards if stats else 0, stats.step_tokens if stats else 0, cancelled)
        if error is not None:
            if not isinstance(error, (ClmkitError, ApiError)):
                log.exception("sequence failed", exc_info=error)
            seq.push(Event("", [], "error", seq.completion_tokens, error=error))
