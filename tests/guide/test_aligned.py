"""ASAp: converges to P(text | grammar) where plain constrained sampling stays biased."""

import math

import pytest

from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.guide import make_guide
from clmkit.guide.aligned import exact_distribution, kl, kl_curves
from clmkit.sampling import Sampling

CHOICES = ["ab", "abc", "abd", "ba", "bcd", "dc"]  # a finite language the tiny model rarely emits


def test_exact_distribution_sums_to_one_and_constrained_is_biased(memo_pair):
    target, _ = memo_pair
    prompt = target.tokenizer("the lazy dog")["input_ids"]
    exact, constrained = exact_distribution(target, prompt, make_guide("grammar", target, choice=CHOICES))
    assert math.isclose(sum(exact.values()), 1.0) and math.isclose(sum(constrained.values()), 1.0)
    assert {target.tokenizer.decode(list(w)) for w in exact} == set(CHOICES)
    assert kl(exact, {w: round(1e6 * p) for w, p in exact.items()}) < 1e-3  # KL of the law itself ~ 0
    assert sum(p * math.log(p / constrained[w]) for w, p in exact.items()) > 0.1  # masking distorts


def test_asap_kl_below_constrained_at_fixed_n(memo_pair):
    """Fixed seeds, N = 200: ASAp's empirical law is far closer to the exact one than plain constrained
    sampling's, whose KL stays near KL(exact || Q) > 0.1."""
    target, _ = memo_pair
    prompt = target.tokenizer("the lazy dog")["input_ids"]
    result = kl_curves(Engine(target), prompt, samples=200, seed=0, choice=CHOICES)
    assert result["aligned"][-1] < 0.5 * result["constrained"][-1]
    assert result["constrained"][-1] > 0.5 * result["kl_exact_vs_constrained_law"]


def test_aligned_needs_plain_temperature_sampling(tiny_llama):
    guide = make_guide("aligned", tiny_llama, choice=CHOICES)
    for sampling in (Sampling(), Sampling(temperature=1.0, top_k=5), Sampling(temperature=1.0, top_p=0.9)):
        with pytest.raises(InputError, match="temperature > 0 and no top-k"):
            Engine(tiny_llama).complete([5, 6], guide=guide, sampling=sampling)


def test_aligned_outputs_stay_in_the_grammar(tiny_llama):
    guide = make_guide("aligned", tiny_llama, choice=CHOICES)
    for seed in range(5):
        out = Engine(tiny_llama).complete([5, 6], guide=guide, sampling=Sampling(temperature=1.0, seed=seed))
        assert out.finish_reason == "stop" and out.text in CHOICES
