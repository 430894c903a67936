"""PINE on tiny random models: segment order cannot change the output; one segment = the plain prompt."""

from __future__ import annotations

import itertools

import pytest
import torch

from clmkit.errors import InputError
from clmkit.prompting.pine import (SegmentedPrompt, importance_order, pine_greedy, pine_logits, pine_mask,
                                   plain_logits, positions_in_order, segment_importance, segment_prompt)

SEGMENTS = ["the quick brown fox\n", "hello world, hello there\n", "1 2 3 4 5\n"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_output_is_invariant_to_segment_order(tiny_models, tokenizer, arch):
    model = tiny_models[arch]
    prompt = segment_prompt(tokenizer, "pick one:\n", SEGMENTS, "answer:")
    reference = pine_logits(model, prompt)
    plain_moved = 0.0
    for order in itertools.permutations(range(3)):
        moved = prompt.permuted(list(order))
        logits = pine_logits(model, moved)
        assert (logits - reference).abs().max() < 1e-4, order  # float summation order only
        assert int(logits.argmax()) == int(reference.argmax())
        plain_moved = max(plain_moved, float((plain_logits(model, moved) - plain_logits(model, prompt)).abs().max()))
    assert plain_moved > 0.1  # negative control: the plain prompt does depend on the order


def test_greedy_continuation_is_invariant_too(tiny_llama, tokenizer):
    prompt = segment_prompt(tokenizer, "pick one:\n", SEGMENTS, "answer:")
    reference = pine_greedy(tiny_llama, prompt, 6)
    assert len(reference) >= 1
    for order in ([2, 0, 1], [1, 2, 0]):
        assert pine_greedy(tiny_llama, prompt.permuted(order), 6) == reference


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_segment_is_the_plain_prompt(tiny_models, tokenizer, arch):
    model = tiny_models[arch]
    prompt = segment_prompt(tokenizer, "pick one:\n", ["the quick brown fox\n"], "answer:")
    torch.testing.assert_close(pine_logits(model, prompt), plain_logits(model, prompt), rtol=0, atol=1e-5)


def test_mask_table():
    # prefix p, segments s0 (2 tokens), s1 (1 token), suffix x: order p s0 s0 s1 x
    prompt = SegmentedPrompt([1], [[2, 3], [4]], [5])
    allowed = pine_mask(prompt.segment_of(), torch.float32)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0],  # prefix: causal
        [1, 1, 0, 1, 0],  # s0 token 0: prefix, itself, all of s1 (bidirectional), not its own future
        [1, 1, 1, 1, 0],  # s0 token 1
        [1, 1, 1, 1, 0],  # s1: prefix, all of s0, itself
        [1, 1, 1, 1, 1],  # suffix: everything before it
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert pine_mask(prompt.segment_of(), torch.float32).min() == torch.finfo(torch.float32).min


def test_positions_parallel_and_ordered():
    prompt = SegmentedPrompt([1, 1], [[2, 2, 2], [3]], [5, 5])
    assert positions_in_order(prompt, None).tolist() == [0, 1, 2, 3, 4, 2, 5, 6]
    assert positions_in_order(prompt, [0, 1]).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert positions_in_order(prompt, [1, 0]).tolist() == [0, 1, 3, 4, 5, 2, 6, 7]


def test_importance_is_order_free_and_ties_break_by_content(tiny_llama, tokenizer):
    prompt = segment_prompt(tokenizer, "pick one:\n", SEGMENTS, "answer:")
    base = segment_importance(tiny_llama, prompt)
    moved = segment_importance(tiny_llama, prompt.permuted([2, 0, 1]))
    torch.testing.assert_close(moved, base[[2, 0, 1]], rtol=0, atol=1e-6)
    tied = SegmentedPrompt([1], [[9], [7], [8]], [5])
    assert importance_order(tied, torch.tensor([0.5, 0.5, 0.1])) == [2, 1, 0]


def test_chat_pieces_read_like_the_templated_prompt(tokenizer):
    prompt = segment_prompt(tokenizer, "Q:\n", ["a\n", "b\n"], "Answer:", chat=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Q:\na\nb\nAnswer:"}], add_generation_prompt=True,
                                         tokenize=False)
    assert tokenizer.decode(prompt.ids) == text


def test_bad_input(tiny_llama, tokenizer):
    with pytest.raises(InputError):
        segment_prompt(tokenizer, "q", [], "a")
    with pytest.raises(InputError):
        segment_prompt(tokenizer, "q", ["x", "  "], "a")
    with pytest.raises(InputError):
        pine_logits(tiny_llama, segment_prompt(tokenizer, "q", ["x", "y"], ""))


@pytest.mark.embedded
def test_embedded_model_is_order_invariant_under_pine(embedded_model):
    tok = embedded_model.tokenizer
    prefix = "Which event is a more plausible cause of 'the cake is in the oven'?\n"
    options = ["A. mix the batter\n", "B. buy a new car\n", "C. wash the dishes\n"]
    prompt = segment_prompt(tok, prefix, options, "Answer with the letter.", chat=True)
    reference = pine_logits(embedded_model, prompt)
    for order in ([2, 1, 0], [1, 0, 2]):
        logits = pine_logits(embedded_model, prompt.permuted(order))
        assert (logits - reference).abs().max() < 1e-3 and int(logits.argmax()) == int(reference.argmax())
    moved = plain_logits(embedded_model, prompt.permuted([2, 1, 0]))
    assert (moved - plain_logits(embedded_model, prompt)).abs().max() > 1e-2  # the plain prompt is not invariant
