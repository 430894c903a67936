"""Guides under speculative decoding, beyond tests/guide/test_grammar.py's five drafters:
- every registered drafter (model-free, draft-model, trained with random weights) under a grammar:
  greedy output token-identical to constrained plain decoding (the grammar masks every drafted node
  before verification; pruned trees are re-indexed, which drafters reading per-node hidden states see);
- ASAp (grammar-aligned) with a drafter: from a trie frozen after some samples, the joint law of the
  first two tokens (prefill + one verified step) equals ASAp's own re-weighted target law (chi-square),
  and plain constrained sampling - a different law there - is rejected (negative control)."""

import pytest
import torch

from clmkit.drafters import available, budget_options, make_drafter, takes_draft_model
from clmkit.engine import Engine
from clmkit.guide import make_guide
from clmkit.guide.tree import first_logits
from clmkit.sampling import Sampling, target_probs
from clmkit.train import trainable
from tests.guide.test_grammar import GRAMMARS, assert_identical
from tests.stats import ALPHA, chisquare_pvalue

COVERED = {"lookup", "recycling", "adaptive", "draft", "rsd"}  # test_grammar.py, four grammars each


def any_drafter(name, model):
    if name in trainable():
        return make_drafter(name, model, checkpoint="random", budget=8)
    if takes_draft_model(name):
        return make_drafter(name, model, draft_model="self:1")
    return make_drafter(name, model, **budget_options(name, 8))


def test_covered_names_are_registered():
    assert COVERED <= set(available())  # a renamed drafter would otherwise drop out of both files


@pytest.mark.parametrize("name", sorted(set(available()) - COVERED))
def test_every_other_drafter_identical_under_a_grammar(tiny_llama, name):
    prompt = tiny_llama.tokenizer("the lazy dog, hello world, the lazy dog, hello there, 1 2 3 fox")["input_ids"]
    for kind in ("regex", "json"):
        guide = make_guide("grammar", tiny_llama, **GRAMMARS[kind])
        plain = Engine(tiny_llama).complete(prompt, max_new_tokens=32, guide=guide)
        drafter, proposed = counting(any_drafter(name, tiny_llama))
        fast = Engine(tiny_llama).complete(prompt, max_new_tokens=32, guide=guide, drafter=drafter)
        assert_identical(tiny_llama, prompt, plain.token_ids, fast.token_ids, guide)
        assert proposed[0] > 0  # trees were drafted (and pruned or verified); random-weight ones mostly pruned


def counting(drafter):
    """The drafter, counting the draft nodes it proposes (before the grammar prunes them)."""
    proposed, propose = [0], drafter.propose

    def wrapped(context):
        tree = propose(context)
        proposed[0] += len(tree) - 1
        return tree

    drafter.propose = wrapped
    return drafter, proposed


CHOICES = ["ab", "abc", "abd", "ba", "bcd", "dc"]
TRIALS = 300  # the negative control is rejected with p < 1e-10 at this size


def trained_asap(target, prompt, samples=40):
    """An ASAp guide after `samples` samples, the last one's update applied."""
    guide = make_guide("aligned", target, choice=CHOICES)
    engine = Engine(target)
    for seed in range(samples):
        engine.complete(prompt, max_new_tokens=8, guide=guide, sampling=Sampling(temperature=1.0, seed=seed))
    guide.update()
    return frozen(guide)


def frozen(guide):
    """The guide with no sampled path to learn from: its next begin() leaves the estimates as they are
    (prefixes a sample visits are added with the unseen-prefix estimate 1, which changes nothing)."""
    guide.path = []
    return guide


def asap_joint(target, prompt, guide):
    """The law ASAp samples the first two tokens from, under its frozen estimates: P(t) c(w t), normalised."""
    probs = {}
    with torch.inference_mode():
        g = frozen(guide)
        g.begin(prompt, Sampling(temperature=1.0))
        p1 = target_probs(first_logits(g, target.module(input_ids=torch.tensor([prompt])).logits[0, -1]), Sampling(temperature=1.0))
        for t1 in torch.nonzero(p1).flatten().tolist():
            if t1 in g.eos_ids:
                probs[(t1,)] = float(p1[t1])
                continue
            g = frozen(guide)
            g.begin(prompt, Sampling(temperature=1.0))
            g.advance([t1])
            logits = g.reweight(target.module(input_ids=torch.tensor([prompt + [t1]])).logits[0, -1], 0)
            p2 = target_probs(logits.masked_fill(~g.allowed()[: logits.numel()], float("-inf")), Sampling(temperature=1.0))
            for t2 in torch.nonzero(p2).flatten().tolist():
                probs[(t1, t2)] = float(p1[t1] * p2[t2])
    return probs


def first_two(target, prompt, make, drafter, trials):
    counts, accepted = {}, 0
    for seed in range(trials):
        out = Engine(target).complete(prompt, max_new_tokens=2, guide=make(), drafter=drafter,
                                      sampling=Sampling(temperature=1.0, seed=seed))
        key = tuple(out.token_ids[:2])
        counts[key] = counts.get(key, 0) + 1
        accepted += out.stats.accepted_tokens
    return counts, accepted


def test_asap_with_a_drafter_samples_asap_law(memo_pair):
    target, _ = memo_pair
    prompt = target.tokenizer("dog ab lazy dc the")["input_ids"]  # a spread law (ab .25, ba .18, dc .56); lookup drafts
    asap = trained_asap(target, prompt)
    law = asap_joint(target, prompt, asap)
    keys = list(law)
    expected = torch.tensor([law[k] for k in keys])
    counts, accepted = first_two(target, prompt, lambda: frozen(asap), make_drafter("lookup", target), TRIALS)
    assert accepted > 0, "lookup never drafted an accepted token: the test would not exercise verification"
    assert set(counts) <= set(law)
    assert chisquare_pvalue(torch.tensor([counts.get(k, 0) for k in keys]), expected) > ALPHA
    constrained = make_guide("grammar", target, choice=CHOICES)
    plain, _ = first_two(target, prompt, lambda: constrained, make_drafter("lookup", target), TRIALS)
    assert chisquare_pvalue(torch.tensor([plain.get(k, 0) for k in keys]), expected) < ALPHA  # negative control
