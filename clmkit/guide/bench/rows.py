"""Several prompts decoded together under per-row guides: the benchmarks' batched loop.

Each row runs the loop `Engine.complete` runs for it alone - the same prefill, the guide's
first_logits / reweight, `next_token` with its own seeded generator - but every step is one batched
target forward over all running rows (the backend's Batch), which is several times the throughput on
a CPU. A row's tokens are therefore those it gets alone, up to kernel rounding in the batched forward
(tests/guide/test_bench_rows.py checks token identity on the tiny model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clmkit.engine import Engine
from clmkit.guide.tree import first_logits
from clmkit.sampling import Sampling, next_token


@dataclass
class Row:
    handle: int
    sampling: Sampling
    generator: torch.Generator | None
    guide: object
    tokens: list[int] = field(default_factory=list)


@torch.inference_mode()
def decode_rows(engine: Engine, prompts: list[list[int]], max_new_tokens: int, samplings: list[Sampling],
                guides: list | None = None) -> list[list[int]]:
    """Each prompt's new tokens (ending with EOS when one was drawn). `guides[i]` (or None) guides row i;
    it is re-scored with node = the row's index in the batched forward (guides that read per-row
    hidden states, like rectify, use it)."""
    model = engine.model
    guides = guides or [None] * len(prompts)
    batch = engine.backend.batch(max(map(len, prompts)) + max_new_tokens + 1)
    rows = []
    for ids, sampling, guide in zip(prompts, samplings, guides):
        handle, logits = batch.add(ids)
        if guide is not None:
            guide.begin(ids, sampling)
            logits = first_logits(guide, logits)
        row = Row(handle, sampling, None if sampling.greedy else sampling.generator(), guide)
        row.tokens.append(next_token(logits, row.sampling, row.generator))
        rows.append(row)
    running = list(rows)
    while True:
        for row in [r for r in running if r.tokens[-1] in model.eos_token_ids or len(r.tokens) >= max_new_tokens]:
            running.remove(row)
            batch.drop(row.handle)
        if not running:
            return [r.tokens for r in rows]
        logits = batch.step({r.handle: r.tokens[-1] for r in running})
        order = {h: b for b, h in enumerate(batch.rows)}  # handle -> row of the batched forward
        for r in running:
            row_logits = logits[r.handle]
            if r.guide is not None:  # as the engine does: advance by the committed token, then re-score
                r.guide.advance(r.tokens[-1:])
                if r.guide.reweights:
                    row_logits = r.guide.reweight(row_logits, order[r.handle])
                allowed = r.guide.allowed()
                if allowed is not None:
                    row_logits = row_logits.masked_fill(~allowed[: row_logits.numel()], float("-inf"))
            r.tokens.append(next_token(row_logits, r.sampling, r.generator))


def length_groups(items: list, length, batch: int, max_slots: int) -> list[list]:
    """Items sorted by length, packed into groups of at most `batch` items and `max_slots` padded slots
    (rows x longest length): similar lengths pad little, long prompts do not blow up the cache."""
    groups: list[list] = []
    for item in sorted(items, key=length):
        group = groups[-1] if groups else None
        if group is None or len(group) >= batch or (len(group) + 1) * length(item) > max_slots:
            groups.append([item])
        else:
            group.append(item)
    return groups
