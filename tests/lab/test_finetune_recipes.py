"""finetune-recipes: the segment recurrence (exact against a full forward, memory used, no gradient
into the memory), the NAR layout (targets only at the masks, no target token in the input); smoke run."""

from __future__ import annotations

import pytest
import torch

from clmkit.lab.corpora import default_tokenizer
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.finetune_recipes import nar_batch, nar_row, segment_forward, segment_losses
from clmkit.lab.model import GPT, GPTConfig
from clmkit.lab.objectives import IGNORE


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=3, n_head=2, n_embd=16, **kw)).eval()


def test_no_memory_equals_the_plain_forward_and_two_segments_equal_the_full_window():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full = model(idx)
        first, mems = segment_forward(model, idx[:, :8])
        second, _ = segment_forward(model, idx[:, 8:], mems)
        alone, _ = segment_forward(model, idx[:, 8:])
    torch.testing.assert_close(first, full[:, :8], rtol=1e-4, atol=1e-5)
    # memory = segment 1's layer inputs, relative positions (RoPE): segment 2 sees exactly what a
    # 16-token causal window sees
    torch.testing.assert_close(second, full[:, 8:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, model(idx[:, 8:]), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(second, alone, atol=1e-3)


def test_segment_two_depends_on_segment_one_only_with_memory():
    model = tiny_gpt()
    a = torch.randint(0, 50, (1, 17))
    b = a.clone()
    b[0, 2] = (b[0, 2] + 1) % 50  # change a token of segment 1 only
    with torch.no_grad():
        la, lb = (segment_losses(model, r, 8, recurrent=True) for r in (a, b))
        na, nb = (segment_losses(model, r, 8, recurrent=False) for r in (a, b))
    assert not torch.allclose(la[:, 8:], lb[:, 8:])
    torch.testing.assert_close(na[:, 8:], nb[:, 8:])


def test_no_gradient_flows_into_the_memory():
    model = tiny_gpt(tie_embeddings=False)  # untied: embedding rows get gradient only through the inputs
    seg1 = torch.randint(0, 25, (2, 8))      # disjoint vocabularies: segment 1 uses ids < 25
    seg2 = torch.randint(25, 50, (2, 8))
    _, mems = segment_forward(model, seg1)
    assert all(not m.requires_grad for m in mems)
    logits, _ = segment_forward(model, seg2, mems)
    logits.square().mean().backward()
    grad = model.wte.weight.grad
    assert grad[:25].abs().max() == 0 and grad[25:].abs().max() > 0


def test_recurrence_rejects_a_non_causal_model():
    with pytest.raises(ValueError, match="causal"):
        segment_forward(tiny_gpt(attention="bidirectional"), torch.zeros(1, 4, dtype=torch.long))


def test_nar_layout():
    tok = default_tokenizer()
    src = tok.encode("the quick brown fox")
    inputs, targets = nar_row(tok, src, "reverse")
    n = len(src)
    assert inputs[1:n + 1] == src and inputs[n + 1] == tok.sep and inputs[n + 2:] == [tok.mask] * n
    assert targets[:n + 2] == [IGNORE] * (n + 2) and targets[n + 2:] == src[::-1]
    assert nar_row(tok, src, "copy")[1][n + 2:] == src and nar_row(tok, src, "copy")[0][0] != inputs[0]
    batch = nar_batch(tok, [(src, "copy"), (src[:2], "reverse")])
    real = batch.targets != IGNORE
    assert (batch.input_ids[real] == tok.mask).all()           # no target token is visible in the input
    assert batch.pad[1].sum() == 2 * (n - 2) and not batch.pad[0].any()
    assert (batch.targets[batch.pad] == IGNORE).all()


def test_smoke_run(tmp_path):
    record = run_experiment("finetune-recipes", Context(scale=0.02, output=tmp_path, progress=False, tiny=True), command="test")
    for variant in ("pretrain-lm", "mlm-pretrain", "nar-from-mlm", "nar-from-scratch", "recurrence"):
        losses = record["curves"][variant]["train_loss"]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"{variant}: loss did not decrease: {losses}"
    names = [r["variant"] for r in record["rows"]]
    assert names == ["pretrained, fixed window", "fine-tuned, fixed-window", "fine-tuned, recurrence",
                     "fine-tuned recurrence, memory off", "NAR from mlm", "NAR from scratch"]
    assert (tmp_path / "finetune-recipes.png").stat().st_size > 1000 and (tmp_path / "curves.png").stat().st_size > 1000
