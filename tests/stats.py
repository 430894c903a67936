"""Chi-square goodness of fit used by every distribution test."""

import torch
from scipy.stats import chisquare

ALPHA = 1e-3  # significance of every distribution test: a correct sampler fails ~1 run in 1000


def chisquare_pvalue(observed: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of counts `observed` under distribution `probs`; bins expected to hold < 5 are pooled."""
    observed = observed.double().flatten()
    probs = probs.double().flatten()
    expected = probs / probs.sum() * observed.sum()
    small = expected < 5
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum().reshape(1)])
        expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)
