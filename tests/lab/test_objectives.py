"""Each objective's inputs, targets and masks on hand-checkable rows."""

from __future__ import annotations

import random

import pytest
import torch

from clmkit.lab import objectives as obj
from clmkit.lab.tokenizer import LabTokenizer, train_bpe


@pytest.fixture(scope="module")
def tok():
    text = ["the cat sat on the mat", "def f(x):\n    return x + 1\n", "<p>hello world</p>"] * 10
    return LabTokenizer(train_bpe(text, vocab_size=300))


def rows_of(n, length, seed=0, low=40, high=290):
    return torch.randint(low, high, (n, length), generator=torch.Generator().manual_seed(seed))


def test_next_token_shifts_by_one():
    rows = rows_of(2, 9)
    b = obj.next_token(rows)
    assert torch.equal(b.input_ids, rows[:, :-1]) and torch.equal(b.targets, rows[:, 1:])


def test_prefix_lm_targets_only_after_the_prefix():
    rows = rows_of(64, 17)
    b = obj.prefix_lm(rows, torch.Generator().manual_seed(1))
    T = b.input_ids.shape[1]
    for i in range(64):
        p = int(b.prefix_len[i])
        assert 1 <= p < T
        has = (b.targets[i] != obj.IGNORE).nonzero().flatten().tolist()
        assert has == list(range(p - 1, T))  # position p-1 predicts the first suffix token
        assert torch.equal(b.targets[i, p - 1:], rows[i, p:])


def test_span_corruption_reassembles(tok):
    rng = random.Random(0)
    for _ in range(50):
        row = [rng.randrange(40, 290) for _ in range(rng.randint(10, 80))]
        corrupted, target = obj.span_corruption(row, tok, rng)
        assert target[-1] == tok.eos
        # put every span back at its sentinel
        spans, current = {}, None
        for t in target[:-1]:
            if t in tok.sentinels:
                current = t
                spans[t] = []
            else:
                spans[current].append(t)
        restored = [x for t in corrupted for x in (spans[t] if t in spans else [t])]
        assert restored == row
        n_masked = sum(len(s) for s in spans.values())
        assert 1 <= n_masked < len(row)


@pytest.mark.parametrize("markers", [False, True])
def test_cm3_and_infill_rearrangement_round_trips(tok, markers):
    rng = random.Random(1)
    for _ in range(200):
        row = [rng.randrange(40, 290) for _ in range(rng.randint(4, 100))]
        spans = obj.choose_spans(len(row), rng, rng.uniform(0.05, 0.5), rng.uniform(1, 10), rng.randint(1, 8))
        assert all(a >= 1 and b > a for a, b in spans) and all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
        seq = obj.rearrange_spans(row, spans, tok, infill_markers=markers)
        assert len(seq) == len(row) + (3 * len(spans) + 1 if markers else 2 * len(spans))
        assert obj.restore_spans(seq, tok, infill_markers=markers) == row
        if not markers:  # CM3 layout: sentinel i in place, then sentinel i + span i at the end, in order
            a, b = spans[0]
            assert seq[a] == tok.sentinels[0]
            tail = seq[len(seq) - sum(1 + (e - s) for s, e in spans):]
            assert tail[0] == tok.sentinels[0] and tail[1:1 + b - a] == row[a:b]


def test_cm3_batch_is_next_token_over_the_rearranged_rows(tok):
    rows = rows_of(8, 33)
    b = obj.cm3(rows, tok, torch.Generator().manual_seed(2))
    for i in range(8):
        real = b.targets[i] != obj.IGNORE
        seq = b.input_ids[i][real].tolist() + [b.targets[i][real][-1].item()]
        assert torch.equal(b.targets[i][real][:-1], b.input_ids[i][real][1:])
        assert obj.restore_spans(seq, tok, infill_markers=False) == rows[i].tolist()
        n_sent = sum(t in tok.sentinels for t in seq)
        assert n_sent >= 2 and n_sent % 2 == 0


def test_infill_mixture_mixes_both_forms(tok):
    rows = rows_of(64, 33)
    b = obj.infill_mixture(rows, tok, torch.Generator().manual_seed(3), p_infill=0.5)
    has_sep = (b.input_ids == tok.sep).any(1)
    assert 10 < has_sep.sum() < 54  # about half the rows are infill rows
    plain = ~has_sep
    assert torch.equal(b.input_ids[plain, :32], rows[plain, :-1])


def test_mlm_targets_only_at_masked_positions(tok):
    rows = rows_of(16, 200)
    b = obj.mlm(rows, tok, torch.Generator().manual_seed(4))
    chosen = b.targets != obj.IGNORE
    assert 0.1 < chosen.float().mean() < 0.2
    assert torch.equal(b.targets[chosen], rows[chosen])
    assert torch.equal(b.input_ids[~chosen], rows[~chosen])
    assert (b.input_ids[chosen] == tok.mask).float().mean() > 0.6


def test_future_targets():
    rows = torch.arange(10, 16)[None]  # inputs 10..14
    f = obj.future_targets(rows, 3)
    assert f.shape == (1, 5, 3)
    assert f[0, 0].tolist() == [11, 12, 13]
    assert f[0, 3].tolist() == [14, 15, obj.IGNORE]
    assert f[0, 4].tolist() == [15, obj.IGNORE, obj.IGNORE]
    assert torch.equal(f[..., 0], obj.next_token(rows).targets)


def test_seq2seq_layouts(tok):
    pairs = [([50, 51, 52], [60, 61]), ([50], [60, 61, 62, 63])]
    causal = obj.seq2seq(pairs, tok, "causal")
    assert causal.input_ids[0, :4].tolist() == [50, 51, 52, tok.sep]
    assert causal.targets[0].tolist()[:6] == [obj.IGNORE, obj.IGNORE, obj.IGNORE, 60, 61, tok.eos]
    assert causal.targets[1].tolist() == [obj.IGNORE, 60, 61, 62, 63, tok.eos]
    prefix = obj.seq2seq(pairs, tok, "prefix")
    assert prefix.prefix_len.tolist() == [4, 2]
    encdec = obj.seq2seq(pairs, tok, "encdec")
    assert encdec.src.tolist() == [[50, 51, 52], [50, tok.pad, tok.pad]]
    assert encdec.src_pad.tolist() == [[False, False, False], [False, True, True]]
    assert encdec.input_ids[1].tolist() == [tok.sep, 60, 61, 62, 63]
    assert encdec.targets[0].tolist() == [60, 61, tok.eos, obj.IGNORE, obj.IGNORE]
    with pytest.raises(ValueError):
        obj.seq2seq(pairs, tok, "sideways")
