"""The sparse-logits path (logits only where a target is) gives the dense path's numbers."""

from __future__ import annotations

import torch

from clmkit.lab.experiments._common import answer_loss, lm_objective_loss, score, token_logprobs
from clmkit.lab.model import GPT, GPTConfig
from clmkit.lab.objectives import IGNORE, Batch


def _batch_and_model(attention="causal"):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=12, attention=attention)).eval()
    inputs = torch.randint(0, 50, (3, 9))
    targets = torch.randint(0, 50, (3, 9))
    targets[0, :6] = IGNORE  # rows with different numbers of targets, one with a single target
    targets[1, :8] = IGNORE
    targets[2, 4:] = IGNORE
    return model, Batch(inputs, targets, prefix_len=torch.tensor([3, 5, 2]) if attention == "prefix" else None)


def test_answer_loss_equals_the_dense_loss():
    for attention in ("causal", "prefix"):
        model, batch = _batch_and_model(attention)
        torch.testing.assert_close(answer_loss(model, batch), lm_objective_loss(model, batch))


def test_score_equals_dense_scoring_per_row():
    model, batch = _batch_and_model()
    lp, n, correct = score(model, batch, "cpu")
    with torch.no_grad():
        logits = model(batch.input_ids)
    real = batch.targets != IGNORE
    torch.testing.assert_close(lp, token_logprobs(logits, batch.targets).sum(-1))
    assert n.tolist() == [3, 1, 4]
    assert correct.tolist() == ((logits.argmax(-1) == batch.targets) & real).sum(-1).tolist()
