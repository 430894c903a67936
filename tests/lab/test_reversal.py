"""The reversal experiment's layouts (SPT chunk orders, BICO blank infilling) and a smoke run."""

from __future__ import annotations

import random

from clmkit.lab.corpora import default_tokenizer, reversal_facts
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.reversal import ORDERS, bico_layout, chunks, make_batches, order_marker, spt_sequence, training_units
from clmkit.lab.objectives import IGNORE


def test_spt_orders_keep_chunks_intact():
    tok = default_tokenizer()
    fact = reversal_facts(1)[0]
    units = chunks(fact, backward=False)
    pieces = [tok.encode(u) for u in units]
    original = spt_sequence(tok, units, "original", random.Random(0))
    assert original == [order_marker(tok, "original")] + [t for p in pieces for t in p] + [tok.eos]
    reversed_ = spt_sequence(tok, units, "reversed", random.Random(0))
    assert reversed_[1:-1] == [t for p in pieces[::-1] for t in p]
    permuted = spt_sequence(tok, units, "permuted", random.Random(3))
    assert sorted(permuted[1:-1]) == sorted(original[1:-1]) and permuted[0] == order_marker(tok, "permuted")
    assert len({order_marker(tok, o) for o in ORDERS}) == 3


def test_bico_layout_masks_one_entity_and_scores_only_it():
    tok = default_tokenizer()
    fact = reversal_facts(1)[0]
    units = chunks(fact, backward=True)  # "P's child is C."
    row, prefix = bico_layout(tok, units, 2)
    assert row[:prefix] == tok.encode(units[0]) + tok.encode(units[1]) + [tok.sentinels[0]] + tok.encode(units[3])
    assert row[prefix:] == [tok.sentinels[0]] + tok.encode(units[2]) + [tok.eom]
    batch = make_batches("BICO", tok, training_units(reversal_facts(4)), 8)(0, __import__("torch").Generator().manual_seed(0))
    for i in range(8):  # the loss sees only the decoded span: no target inside the bidirectional prefix
        p = int(batch.prefix_len[i])
        assert (batch.targets[i, :p] == IGNORE).all() and (batch.targets[i, p:] != IGNORE).any()


def test_smoke_run(tmp_path):
    record = run_experiment("reversal", Context(scale=0.02, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"{variant}: loss did not decrease: {losses}"
    assert [r["variant"] for r in record["rows"]] == ["next-token", "BICO", "SPT"]
    assert (tmp_path / "reversal.png").stat().st_size > 1000
