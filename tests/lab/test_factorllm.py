"""FactorLLM: with every expert active the factorised FFN equals the dense one; oracle routing keeps
the top-k mass; the PAR router learns a routing it can; smoke run."""

from __future__ import annotations

import torch

from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.factorllm import factorise_lab, finetune, train_router
from clmkit.lab.model import GPT, GPTConfig
from clmkit.lab.objectives import next_token


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def test_all_experts_equal_the_dense_ffn_and_topk_zeroes_the_rest():
    model = tiny_gpt()
    x = torch.randint(0, 50, (2, 10))
    dense = model(x)
    ffns = factorise_lab(model, 4)
    torch.testing.assert_close(model(x), dense)
    f = ffns[0]
    h_in = torch.randn(5, 16)
    f.k, f.mode = 1, "oracle"
    h = f.hidden(h_in)
    best = f.mass(h).argmax(-1)
    kept = h.view(5, 4, -1) * torch.nn.functional.one_hot(best, 4)[..., None]
    torch.testing.assert_close(f(h_in), f.out(kept.reshape(5, -1)))


def test_par_router_learns_a_learnable_routing():
    model = tiny_gpt()
    f = factorise_lab(model, 4)[0]
    x = torch.randn(512, 16)
    mass = torch.zeros(512, 4).scatter_(1, (x[:, :1] > 0).long() * 2, 1.0) + 0.01  # expert 0 or 2 by a sign
    assert train_router(f, [(x, mass)], 1, 200, 0) > 0.9  # random routing: 0.25


def test_finetune_trains_the_experts_with_the_router_frozen(tmp_path):
    model = tiny_gpt()
    ffns = factorise_lab(model, 4)
    router, up = ffns[0].router.weight.clone(), ffns[0].hidden.up.weight.clone()
    make_batch = lambda step, g: next_token(torch.randint(0, 50, (4, 11), generator=g))  # noqa: E731
    finetune(Context(output=tmp_path, progress=False, tiny=True), "ft", model, ffns, 2, None, make_batch, 4, None, 1e-3, 4)
    assert torch.equal(ffns[0].router.weight, router)  # PAR router frozen
    assert not torch.equal(ffns[0].hidden.up.weight, up)  # the experts' up-projection is trained
    assert all(f.k == 2 and f.mode == "router (PAR)" for f in ffns)


def test_smoke_run(tmp_path):
    record = run_experiment("factorllm", Context(scale=0.02, output=tmp_path, progress=False, tiny=True), command="test")
    losses = record["curves"]["dense GPT"]["train_loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    lab = {(r["k"], r["routing"]): r["loss"] for r in record["extra"]["lab"]}
    dense = record["extra"]["lab_info"]["dense"]
    assert lab[(8, "oracle")] == dense and lab[(1, "oracle")] >= dense - 1e-6
    assert [r["k"] for r in record["extra"]["lab_fine_tuned"]] == [2, 4, 8]
