"""Sampling draws from softmax of the processed logits: exact warper semantics + chi-square tests."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.sampling import Sampling, process_logits, target_probs
from tests.stats import ALPHA, chisquare_pvalue



@pytest.mark.parametrize("t,k,p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 10, 0.9), (1.0, 1, 1.0)])
def test_processing_matches_hf_warpers(t, k, p):
    logits = torch.randn(4, 50) * 3
    ref = TemperatureLogitsWarper(t)(None, logits.clone())
    if k:
        ref = TopKLogitsWarper(k)(None, ref)
    if p < 1:
        ref = TopPLogitsWarper(p)(None, ref)
    ours = process_logits(logits, Sampling(temperature=t, top_k=k, top_p=p))
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2)])
def test_invalid_values_rejected(kwargs):
    with pytest.raises(InputError):
        Sampling(**kwargs)


def test_first_token_distribution_matches_softmax(tiny_llama):
    """1,200 one-token generations through the engine: counts vs softmax(processed logits), chi-square.

    (The many-sample tests of the acceptance rule itself live in test_verify.py.)"""
    engine = Engine(tiny_llama)
    prompt = [5, 6, 7]
    s = Sampling(temperature=1.5, top_k=12)
    with torch.inference_mode():
        logits = tiny_llama.module(input_ids=torch.tensor([prompt])).logits[0, -1]
    probs = target_probs(logits, s)
    n = 1200
    counts = torch.zeros_like(probs)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        tok = engine.complete(prompt, max_new_tokens=1, sampling=Sampling(1.5, 12, 1.0, seed)).token_ids[0]
        counts[tok] += 1
    support = probs > 0
    assert counts[~support].sum() == 0, "sampled a token top-k removed"
    assert chisquare_pvalue(counts[support], probs[support]) > ALPHA

