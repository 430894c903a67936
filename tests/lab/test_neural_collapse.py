"""NC1-NC4 on features whose geometry is known, and a smoke run of the experiment."""

from __future__ import annotations

import torch

from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments.neural_collapse import collapse_metrics


def simplex_etf(C: int, d: int) -> torch.Tensor:
    """C unit vectors in R^d with pairwise cosine -1/(C-1): the collapsed geometry."""
    M = torch.eye(C) - 1 / C
    basis = torch.linalg.qr(torch.randn(d, C, generator=torch.Generator().manual_seed(0)))[0]
    means = M @ basis.T
    return means / means.norm(dim=1, keepdim=True)


def test_collapsed_features_score_zero_and_noise_does_not():
    C, d, per = 8, 32, 20
    means = simplex_etf(C, d)
    labels = torch.arange(C).repeat_interleave(per)
    collapsed = collapse_metrics(means[labels].clone(), labels, means * 3.0, C, 2)
    for k in ("NC1", "NC2 equinorm", "NC2 equiangular", "NC3 self-duality", "NC4 1-agreement"):
        assert collapsed[k] < 1e-6, (k, collapsed[k])
    noisy_h = means[labels] + 0.5 * torch.randn(C * per, d, generator=torch.Generator().manual_seed(1))
    noisy = collapse_metrics(noisy_h, labels, torch.randn(C, d, generator=torch.Generator().manual_seed(2)), C, 2)
    assert noisy["NC1"] > 0.1 and noisy["NC3 self-duality"] > 0.5 and noisy["NC4 1-agreement"] > 0.05


def test_only_frequent_classes_count():
    means = simplex_etf(4, 16)
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10 + [3] * 1)  # class 3 is below min_per_class
    m = collapse_metrics(means[labels], labels, means, classes=10, min_per_class=5)
    assert m["classes"] == 3


def test_smoke_run(tmp_path):
    record = run_experiment("neural-collapse", Context(scale=0.02, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{variant}: loss did not decrease"
    assert len(record["extra"]["over_training"]) == 2 and all("NC1" in r for r in record["rows"])
