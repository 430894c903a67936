"""MoE-X: routing picks the experts with the largest ReLU activation, gates sum to one, the wide
activation layer is sparse; the selectivity score is 1 for a one-role neuron; smoke run."""

from __future__ import annotations

import torch

from clmkit.lab.corpora import TAGS
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.moe_x import ReLUExperts, selectivity


def test_sparsity_routing_picks_the_largest_activations():
    torch.manual_seed(0)
    layer = ReLUExperts(d=8, n_experts=4, hidden=6, top_k=2, routing="sparsity")
    x = torch.randn(2, 5, 8)
    out = layer(x)
    assert out.shape == x.shape
    act = torch.relu(torch.einsum("nd,edh->neh", x.reshape(-1, 8), layer.up))
    want = act.norm(dim=-1).topk(2, dim=-1).indices.sort(-1).values
    used = layer.activations.view(10, 4, 6).abs().sum(-1) > 0
    got = used.nonzero()[:, 1].view(10, -1)
    assert torch.equal(got, want)  # exactly the two experts with the largest activation norm fire
    # the output is the gated sum of exactly those experts
    gates = act.norm(dim=-1).softmax(-1).gather(1, want)
    gates = gates / gates.sum(-1, keepdim=True)
    manual = sum(gates[:, j, None] * torch.einsum("nh,nhd->nd", act[torch.arange(10), want[:, j]], layer.down[want[:, j]])
                 for j in range(2))
    torch.testing.assert_close(out.reshape(10, 8), manual)


def test_selectivity_of_known_neurons():
    roles = torch.tensor([0, 0, 1, 1, 2, 2])
    one_role = torch.tensor([1.0, 1.0, 0, 0, 0, 0])[:, None]   # fires only for role 0
    every_role = torch.ones(6, 1)                               # fires equally for all
    dead = torch.zeros(6, 1)
    s = selectivity(torch.cat([one_role, every_role, dead], 1), roles, live=1e-3)
    assert s["live neurons"] == 2
    assert abs(s["selectivity"] - 0.5) < 1e-6 and s["monosemantic (>0.5)"] == 0.5  # (1 + 0) / 2 neurons
    assert len(TAGS) > 3


def test_smoke_run(tmp_path):
    record = run_experiment("moe-x", Context(scale=0.02, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{variant}: loss did not decrease"
    widths = {r["variant"]: r["total neurons"] for r in record["rows"]}
    assert widths["MoE-X"] == widths["top-k MoE"] > widths["dense GELU"]
