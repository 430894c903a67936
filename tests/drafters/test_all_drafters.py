"""Every registered drafter: greedy output identical to plain decoding, sampling distribution equal
to the target's (20,000 verification steps, chi-square at 1e-3). Model-free drafters run with trees of
8 draft tokens (`wide`), larger than their CPU-tuned defaults, so branching trees are exercised;
the defaults themselves run in test_embedded.py."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clmkit.drafters import available, budget_options, make_drafter, takes_draft_model
from clmkit.sampling import Sampling
from tests.drafters.harness import assert_greedy_parity, assert_sampling_lossless

from clmkit.train import trainable

# Trained drafters (issue 10) need a checkpoint and the target's hidden states: tests/train/test_trained_drafters.py.
DRAFTERS = [name for name in available() if name not in trainable()]


def wide(name: str) -> dict:
    """Model-free drafters: 8 draft tokens. Draft-model drafters keep their defaults (a 3-token chain,
    6-token trees), which already branch, and whose draft forwards dominate these tests' run time."""
    return {} if takes_draft_model(name) else budget_options(name, 8)


def repetitive(pattern: list[int], times: int, tail: list[int]) -> list[int]:
    return pattern * times + tail


@pytest.mark.parametrize("name", DRAFTERS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.lists(st.integers(1, 319), min_size=1, max_size=6), times=st.integers(1, 4),
       tail=st.lists(st.integers(1, 319), max_size=5))
def test_greedy_identical_to_plain(tiny_models, name, arch, pattern, times, tail):
    model = tiny_models[arch]
    assert_greedy_parity(model, make_drafter(name, model, **wide(name)), repetitive(pattern, times, tail), max_new_tokens=40)


@pytest.mark.parametrize("name", DRAFTERS)
def test_drafts_get_accepted(tiny_llama, name):
    """Guard against a drafter that never proposes anything useful (parity would pass trivially)."""
    drafter = make_drafter(name, tiny_llama, **wide(name))
    total = 0
    for prompt in ([5, 6, 7, 8] * 4, [20, 21] * 6, [9, 40, 41, 9, 40]):
        out = assert_greedy_parity(tiny_llama, drafter, prompt, max_new_tokens=48)
        total += out.stats.accepted_tokens
    assert total > 0


@pytest.mark.parametrize("name", DRAFTERS)
def test_sampling_matches_target(memo_pair, name):
    """On the memoised tiny Llama (harness.PathMemo: real logits per token path, computed once) so
    20,000 steps take seconds; draft-model drafters draft with its memoised self:1."""
    target, draft = memo_pair
    options = {"draft_model": draft} if takes_draft_model(name) else {}
    drafter = make_drafter(name, target, **options, **wide(name))
    context = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    assert_sampling_lossless(target, drafter, context, Sampling(temperature=0.8, top_k=40, seed=0))
