"""Training objectives: each turns raw token rows into a `Batch` (inputs, per-position targets with
-100 = no loss, and the attention context the objective needs).

  next_token      causal LM: predict token t+1 from tokens <= t
  prefix_lm       a random split point p per row: the prefix is read bidirectionally, loss on the rest
  span_corruption T5: spans replaced by sentinels in the input, target = sentinel + span, ...
  mlm             BERT: 15% of positions masked (80% <mask>, 10% random, 10% kept), predict them in place
  cm3             CM3 causal masking: spans cut out, a sentinel left in place, the spans appended at the
                  end after their sentinels; then plain next-token loss over the whole rearranged row
  fim / infill    CodeGen2 / FIM span infill: like cm3 but with <sep> before the moved spans and <eom>
                  after each; `infill_mixture` mixes it 50/50 with next_token per row
  future_targets  the next W tokens at every position (future token prediction)
  seq2seq         a (source, target) pair laid out for a causal decoder, a prefix-LM or an encoder–decoder

Per-row choices use a `random.Random` seeded from the caller's torch.Generator, so a batch is a pure
function of (seed, step): resumed training sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace

import torch

from clmkit.lab.tokenizer import LabTokenizer

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor                 # (B, T)
    targets: torch.Tensor                   # (B, T) or (B, T, W); IGNORE = no loss
    prefix_len: torch.Tensor | None = None  # (B,) for prefix-LM layers
    pad: torch.Tensor | None = None         # (B, T) True at padding (keys nobody may read)
    src: torch.Tensor | None = None         # (B, S) encoder input
    src_pad: torch.Tensor | None = None     # (B, S)

    def to(self, device) -> "Batch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def model_inputs(self) -> dict:
        return {"prefix_len": self.prefix_len, "pad": self.pad, "src": self.src, "src_pad": self.src_pad}


def py_rng(g: torch.Generator) -> random.Random:
    return random.Random(int(torch.randint(0, 2**62, (1,), generator=g)))


def pad_stack(rows: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    length = length or max(len(r) for r in rows)
    return torch.tensor([r[:length] + [value] * (length - len(r)) for r in rows], dtype=torch.long)


def shifted(seqs: list[list[int]], tok: LabTokenizer, loss_from: list[int] | None = None, length: int | None = None) -> Batch:
    """Next-token layout of variable-length sequences, right-padded: input = seq[:-1], target = seq[1:];
    positions t < loss_from[i] - 1 (targets inside the first loss_from tokens) carry no loss."""
    inputs = pad_stack([s[:-1] for s in seqs], tok.pad, length)
    targets = pad_stack([s[1:] for s in seqs], IGNORE, length)
    for i, start in enumerate(loss_from or []):
        targets[i, : max(start - 1, 0)] = IGNORE
    pad = pad_stack([[0] * (len(s) - 1) for s in seqs], 1, length).bool()
    return Batch(inputs, targets, pad=pad if pad.any() else None)


def next_token(rows: torch.Tensor) -> Batch:
    return Batch(rows[:, :-1], rows[:, 1:].clone())


def prefix_lm(rows: torch.Tensor, g: torch.Generator, min_prefix: int = 1) -> Batch:
    """Split each row at p ~ U[min_prefix, T-1]: positions < p attend bidirectionally among themselves
    (the `prefix` attention policy); targets only where the predicted token lies at or after p, so
    nothing is predicted that the prefix already showed."""
    inputs, targets = rows[:, :-1], rows[:, 1:].clone()
    T = inputs.shape[1]
    p = torch.randint(min_prefix, T, (rows.shape[0],), generator=g)
    t = torch.arange(T)
    targets[t[None, :] < (p[:, None] - 1)] = IGNORE  # position p-1 predicts token p: the first suffix token
    return Batch(inputs, targets, prefix_len=p)


def partition(total: int, parts: int, rng: random.Random) -> list[int]:
    """`parts` positive integers summing to `total`, uniformly over such compositions."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def choose_spans(length: int, rng: random.Random, noise: float, mean_span: float, max_spans: int) -> list[tuple[int, int]]:
    """T5's random span layout: about `noise` of `length` tokens in about noise*length/mean_span spans
    (at most max_spans), sorted [start, end) pairs, each after at least one kept token."""
    n_noise = min(length - 1, max(1, round(length * noise)))
    n_spans = max(1, min(max_spans, round(n_noise / mean_span), n_noise, length - n_noise))
    spans, pos = [], 0
    for keep, span in zip(partition(length - n_noise, n_spans, rng), partition(n_noise, n_spans, rng)):
        pos += keep
        spans.append((pos, pos + span))
        pos += span
    return spans


def span_corruption(row: list[int], tok: LabTokenizer, rng: random.Random, noise: float = 0.15,
                    mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """T5: (input with each span replaced by sentinel i, target = sentinel_i span_i ... <eos>)."""
    spans = choose_spans(len(row), rng, noise, mean_span, len(tok.sentinels))
    corrupted, target, last = [], [], 0
    for i, (a, b) in enumerate(spans):
        corrupted += row[last:a] + [tok.sentinels[i]]
        target += [tok.sentinels[i]] + row[a:b]
        last = b
    return corrupted + row[last:], target + [tok.eos]


def mlm(rows: torch.Tensor, tok: LabTokenizer, g: torch.Generator, rate: float = 0.15) -> Batch:
    """BERT masking: targets are the original tokens at the chosen positions (no shift)."""
    chosen = torch.rand(rows.shape, generator=g) < rate
    action = torch.rand(rows.shape, generator=g)
    inputs = rows.clone()
    inputs[chosen & (action < 0.8)] = tok.mask
    random_ids = torch.randint(0, tok.vocab_size, rows.shape, generator=g)
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    targets = torch.where(chosen, rows, torch.full_like(rows, IGNORE))
    return Batch(inputs, targets)


def rearrange_spans(row: list[int], spans: list[tuple[int, int]], tok: LabTokenizer, infill_markers: bool) -> list[int]:
    """Cut `spans` out of `row`, leave sentinel i in place of span i, append sentinel_i + span_i at the
    end (CM3). With infill_markers: <sep> before the moved spans and <eom> after each (CodeGen2)."""
    kept, moved, last = [], [], 0
    for i, (a, b) in enumerate(spans):
        kept += row[last:a] + [tok.sentinels[i]]
        moved += [tok.sentinels[i]] + row[a:b] + ([tok.eom] if infill_markers else [])
        last = b
    return kept + row[last:] + ([tok.sep] if infill_markers else []) + moved


def restore_spans(seq: list[int], tok: LabTokenizer, infill_markers: bool) -> list[int]:
    """Inverse of `rearrange_spans`: put each moved span back at its sentinel."""
    sentinel_index = {s: i for i, s in enumerate(tok.sentinels)}
    marks = [k for k, t in enumerate(seq) if t in sentinel_index]  # n in the body, then n moved
    n = len(marks) // 2
    if n == 0:
        return list(seq)
    body = seq[:marks[n] - 1] if infill_markers else seq[:marks[n]]  # without <sep>
    spans = {}
    for j in range(n):
        end = marks[n + j + 1] if j + 1 < n else len(seq)
        span = seq[marks[n + j] + 1:end]
        spans[seq[marks[n + j]]] = span[:-1] if infill_markers else span  # without <eom>
    return [x for t in body for x in (spans[t] if t in spans else [t])]


def cm3(rows: torch.Tensor, tok: LabTokenizer, g: torch.Generator, max_spans: int = 3, mean_span: float = 8.0) -> Batch:
    """CM3: 1..max_spans spans (count ~ Poisson(1) clipped, as in the paper) per row moved to the end;
    rows shorter than the batch width by 2 * spans are right-padded. Loss on every real token."""
    rng = py_rng(g)
    width = rows.shape[1] + 2 * max_spans
    seqs = []
    for row in rows.tolist():
        n = min(max_spans, max(1, poisson(rng, 1.0)))
        spans = choose_spans(len(row), rng, n * mean_span / len(row), mean_span, n)
        seqs.append(rearrange_spans(row, spans, tok, infill_markers=False))
    return shifted(seqs, tok, length=width - 1)


def poisson(rng: random.Random, lam: float) -> int:
    """Knuth's sampler (the stdlib's random has no Poisson)."""
    k, p, limit = 0, rng.random(), math.exp(-lam)
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def infill_mixture(rows: torch.Tensor, tok: LabTokenizer, g: torch.Generator, p_infill: float = 0.5,
                   max_spans: int = 3, mean_span: float = 8.0) -> Batch:
    """CodeGen2's mixture: each row is next-token (prob 1 - p_infill) or span infill (spans moved to
    the end with <sep>/<eom>; loss on every real token, as CodeGen2 trains both parts)."""
    rng = py_rng(g)
    width = rows.shape[1] + 3 * max_spans + 1
    seqs = []
    for row in rows.tolist():
        if rng.random() < p_infill:
            n = rng.randint(1, max_spans)
            spans = choose_spans(len(row), rng, n * mean_span / len(row), mean_span, n)
            seqs.append(rearrange_spans(row, spans, tok, infill_markers=True))
        else:
            seqs.append(row)
    return shifted(seqs, tok, length=width - 1)


def future_targets(rows: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, window) for inputs rows[:, :-1]: [b, t, w] = rows[b, t + 1 + w], IGNORE past the end."""
    B, L = rows.shape
    T = L - 1
    idx = torch.arange(T, device=rows.device)[:, None] + 1 + torch.arange(window, device=rows.device)[None, :]  # (T, W)
    valid = idx < L
    out = rows[:, idx.clamp(max=L - 1)]
    return torch.where(valid[None], out, torch.full_like(out, IGNORE))


def seq2seq(pairs: list[tuple[list[int], list[int]]], tok: LabTokenizer, layout: str) -> Batch:
    """(source, target) pairs laid out for `layout`:
      causal   [src <sep> tgt <eos>] next-token, loss on tgt <eos> only
      prefix   the same row, src <sep> read bidirectionally (prefix_len = len(src) + 1)
      encdec   encoder reads src; decoder input <sep> tgt, predicts tgt <eos>
    """
    if layout in ("causal", "prefix"):
        seqs = [s + [tok.sep] + t + [tok.eos] for s, t in pairs]
        batch = shifted(seqs, tok, loss_from=[len(s) + 1 for s, _ in pairs])
        if layout == "prefix":
            batch.prefix_len = torch.tensor([len(s) + 1 for s, _ in pairs])
        return batch
    if layout == "encdec":
        batch = shifted([[tok.sep] + t + [tok.eos] for _, t in pairs], tok)
        src = pad_stack([s for s, _ in pairs], tok.pad)
        src_pad = pad_stack([[0] * len(s) for s, _ in pairs], 1).bool()
        batch.src, batch.src_pad = src, src_pad
        return batch
    raise ValueError(f"unknown seq2seq layout {layout!r}; known: causal, prefix, encdec")
