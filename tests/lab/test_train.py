"""The training loop: checkpoints round-trip, a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
import torch

from clmkit.errors import InputError
from clmkit.lab.model import GPT, GPTConfig
from clmkit.lab.objectives import next_token
from clmkit.lab.train import TrainConfig, load_checkpoint, lr_at, plot_curves, save_checkpoint, train

CONFIG = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)


def data(step, g):
    # a learnable pattern: token t+1 = (t * 3 + 1) % 64, random starts
    start = torch.randint(0, 64, (4, 1), generator=g)
    rows = [start]
    for _ in range(12):
        rows.append((rows[-1] * 3 + 1) % 64)
    return next_token(torch.cat(rows, 1))


def loss_fn(model, batch):
    # noise from the global RNG stands in for in-model sampling (lexinvariant): resume must restore it
    logits = model(batch.input_ids) + 0.1 * torch.randn(batch.input_ids.shape[0], 1, 64)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 64), batch.targets.reshape(-1))


def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**CONFIG))


def test_lr_schedule():
    c = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(1e-4)
    assert lr_at(9, c) == pytest.approx(1e-3)
    assert lr_at(100, c) == pytest.approx(1e-4)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(10, 100))


def test_loss_decreases_and_resume_is_exact(tmp_path):
    c = TrainConfig(steps=30, lr=1e-2, warmup=3, eval_every=10, checkpoint_every=10)
    full = model()
    r_full = train(full, loss_fn, data, c, folder=tmp_path / "full", progress=False, model_config=CONFIG)
    assert sum(r_full.train_loss[-5:]) < 0.8 * sum(r_full.train_loss[:5])
    assert json.loads((tmp_path / "full" / "state.json").read_text())["step"] == 30

    def interrupted(step, g):  # the process dies at step 15, after the step-10 checkpoint
        if step == 15:
            raise KeyboardInterrupt
        return data(step, g)

    with pytest.raises(KeyboardInterrupt):
        train(model(), loss_fn, interrupted, c, folder=tmp_path / "part", progress=False, model_config=CONFIG)
    assert json.loads((tmp_path / "part" / "state.json").read_text())["step"] == 10
    resumed = model()
    r_res = train(resumed, loss_fn, data, c, folder=tmp_path / "part", progress=False, model_config=CONFIG)
    assert r_res.resumed_from == 10
    assert r_res.train_loss == r_full.train_loss and r_res.eval_steps == r_full.eval_steps
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_different_config_does_not_resume(tmp_path):
    c = TrainConfig(steps=4, warmup=1)
    train(model(), loss_fn, data, c, folder=tmp_path, progress=False, model_config=CONFIG)
    r = train(model(), loss_fn, data, TrainConfig(steps=4, warmup=1, lr=5e-4), folder=tmp_path, progress=False,
              model_config=CONFIG)
    assert r.resumed_from == 0 and len(r.steps) == 4


def test_checkpoint_round_trip(tmp_path):
    m = model()
    opt = torch.optim.AdamW(m.parameters())
    loss_fn(m, data(0, torch.Generator().manual_seed(0))).backward()
    opt.step()
    save_checkpoint(tmp_path, m, opt, {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    m2 = model()
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(1.0)
    opt2 = torch.optim.AdamW(m2.parameters())
    assert load_checkpoint(tmp_path, m2, opt2) == {"step": 1}
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    for p, p2 in zip(m.parameters(), m2.parameters()):
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
        assert float(opt.state[p]["step"]) == float(opt2.state[p2]["step"])
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(InputError):
        load_checkpoint(tmp_path, m2)


def test_plot_curves(tmp_path):
    r = train(model(), loss_fn, data, TrainConfig(steps=3, warmup=1), progress=False, eval_fn=lambda: 1.0)
    plot_curves({"a": r}, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 1000
