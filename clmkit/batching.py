"""Batched decoding: B independent sequences advance together, one target forward per step.

Each row has its own prompt length, positions, sampling (and seeded generator), stop strings, token
budget, EOS rule and Stats; rows join (`add`) and leave (finished, or `cancel`) between steps, so a
server can feed requests in as they arrive (continuous batching). A row's greedy output is the same
as `Engine.complete` on that prompt alone: the prompt is prefilled alone, and each step's batched
forward gives every row the logits it would get alone (up to kernel rounding: near-ties).

    dec = BatchDecoder(engine)
    rid = dec.add("prompt", max_new_tokens=64)
    while dec.active:
        for rid, chunk in dec.step():     # chunk.finish_reason is set on a row's last chunk
            ...

Plain decoding only: speculative drafts and guides run per sequence (`Engine.generate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from clmkit.engine import Chunk, Engine, Prompt, Stats, commit
from clmkit.errors import InputError
from clmkit.sampling import Sampling, next_token
from clmkit.text_stream import TextStream


@dataclass
class Row:
    handle: int  # the backend batch's row
    sampling: Sampling
    generator: object
    budget: int
    eos: set[int]
    stream: TextStream
    context: list[int]
    stats: Stats
    start: float
    pending: list[int] = field(default_factory=list)


class BatchDecoder:
    def __init__(self, engine: Engine, capacity: int = 1024):
        self.engine = engine
        self.batch = engine.backend.batch(capacity)
        self.rows: dict[int, Row] = {}
        self._next_id = 0

    @property
    def active(self) -> bool:
        return bool(self.rows)

    def add(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        sampling: Sampling | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        chat: bool | None = None,
        truncate: bool = False,
        ignore_eos: bool = False,
    ) -> int:
        """Start a request (its prefill runs now); returns its id. Same arguments as Engine.generate."""
        e, model = self.engine, self.engine.model
        sampling = e._sampling(sampling, temperature, top_k, top_p, seed)
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        max_rows = e.backend.max_rows
        if max_rows is not None and len(self.rows) >= max_rows:
            raise InputError(f"the {e.backend.name} backend decodes at most {max_rows} rows at once")
        ids = e._fit_context(e.encode(prompt, chat), max_new_tokens, truncate)
        generator = None if sampling.greedy else sampling.generator()
        start = time.perf_counter()
        handle, logits = self.batch.add(ids)
        stats = Stats(prompt_tokens=len(ids), ttft_s=time.perf_counter() - start)
        row = Row(handle, sampling, generator, min(max_new_tokens, model.context_length - len(ids)),
                  set() if ignore_eos else model.eos_token_ids, TextStream(model.tokenizer, list(stop)), list(ids),
                  stats, start, [next_token(logits, sampling, generator)])
        rid, self._next_id = self._next_id, self._next_id + 1
        self.rows[rid] = row
        return rid

    def cancel(self, rid: int) -> None:
        row = self.rows.pop(rid, None)
        if row is not None:
            self.batch.drop(row.handle)

    def step(self) -> list[tuple[int, Chunk]]:
        """Emit every row's pending token, then one batched forward for the rows still running."""
        out, running = [], {}
        for rid, row in list(self.rows.items()):
            new, text, finish = commit(row.pending, row.context, row.stats, row.budget, row.eos, row.stream)
            if not finish:
                row.stats.target_forwards += 1
                row.stats.step_tokens += 1
                running[row.handle] = row
            row.stats.decode_s = time.perf_counter() - row.start - row.stats.ttft_s
            out.append((rid, Chunk(new, text, row.stats, finish)))
            if finish:
                self.cancel(rid)
        if running:
            logits = self.batch.step({h: row.context[-1] for h, row in running.items()})
            for h, row in running.items():
                row.pending = [next_token(logits[h], row.sampling, row.generator)]
        return out


def generate_batch(engine: Engine, prompts: Sequence[Prompt], **options) -> Iterator[tuple[int, Chunk]]:
    """(index into prompts, Chunk) as rows advance; every prompt shares `options` (Engine.generate's)."""
    if not prompts:
        raise InputError("generate_batch needs at least one prompt")
    dec = BatchDecoder(engine)
    index = {}
    try:
        for i, p in enumerate(prompts):
            index[dec.add(p, **options)] = i
        while dec.active:
            for rid, chunk in dec.step():
                yield index[rid], chunk
    finally:
        for rid in list(dec.rows):
            dec.cancel(rid)
