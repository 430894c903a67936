"""Momentum decoding: the n-gram graph bookkeeping, less repetition than greedy, drafters token-identical."""

import pytest

from clmkit.drafters import budget_options, make_drafter
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.guide import make_guide


def rep(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / max(1, len(grams))


def test_repetition_length_and_rollback(tiny_llama):
    m = make_guide("momentum", tiny_llama)
    m.begin([1, 2, 3, 1, 2], None)
    assert m.repetition_length(9) == 0  # new token: no circuit
    assert m.repetition_length(3) == 3  # "1 2 3" again
    assert m.repetition_length(1) == 1  # token seen, but "2 1" is new
    m.advance([3])
    assert m.repetition_length(1) == 4  # "1 2 3 1"
    m.rollback(1)
    assert m.repetition_length(3) == 3 and m.tokens == [1, 2, 3, 1, 2]
    fresh = make_guide("momentum", tiny_llama)
    fresh.begin([1, 2, 3, 1, 2], None)
    assert +m.ngrams == +fresh.ngrams  # rollback restores the graph exactly


def test_scores_follow_the_formula(tiny_llama):
    import torch

    m = make_guide("momentum", tiny_llama, alpha=0.5, k=3)
    m.begin([7, 8, 7], None)
    logits = torch.full((tiny_llama.vocab_size,), -20.0)
    logits[8], logits[9], logits[10] = 3.0, 2.9, 0.0  # 8 would repeat "7 8" (L = 2), 9 is new
    scores = m.reweight(logits, 0)
    p = torch.softmax(logits, -1)
    assert torch.isclose(scores[8], p[8] - 0.5 * 2) and torch.isclose(scores[9], p[9])
    assert int(scores.argmax()) == 9 and torch.isinf(scores[11])


@pytest.mark.embedded
def test_less_repetitive_than_greedy_on_the_embedded_model(embedded_model):
    """SmolLM2-135M loops under greedy decoding on list-like prompts; momentum leaves the loop."""
    prompt = "List the benefits of exercise."
    greedy = Engine(embedded_model).complete(prompt, max_new_tokens=64, ignore_eos=True).token_ids
    momentum = Engine(embedded_model).complete(prompt, max_new_tokens=64, guide=make_guide("momentum", embedded_model)).token_ids
    assert rep(momentum, 4) < rep(greedy, 4) or rep(greedy, 4) == 0


@pytest.mark.parametrize("name", ["lookup", "recycling", "adaptive"])
def test_drafters_token_identical_to_plain_momentum(tiny_llama, name):
    prompt = [5, 6, 7, 8] * 4
    guide = make_guide("momentum", tiny_llama)
    plain = Engine(tiny_llama).complete(prompt, max_new_tokens=50, guide=guide)
    drafter = make_drafter(name, tiny_llama, **budget_options(name, 8))
    fast = Engine(tiny_llama).complete(prompt, max_new_tokens=50, guide=guide, drafter=drafter)
    assert fast.token_ids == plain.token_ids


def test_momentum_is_greedy(tiny_llama):
    with pytest.raises(InputError, match="greedy"):
        Engine(tiny_llama).complete([5, 6], guide=make_guide("momentum", tiny_llama), temperature=0.7)
