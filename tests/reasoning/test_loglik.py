"""Log-likelihood scoring (`direct-ll`) against the plain definition: one full forward per choice."""

from __future__ import annotations

import pytest
import torch

from clmkit import Engine
from clmkit.errors import InputError
from clmkit.hf_adapter import Forward
from clmkit.reasoning.evaluate import metrics, run
from clmkit.reasoning.lm import FakeModel
from clmkit.reasoning.loglik import choice_trie, encode_pair, pick, score_continuations
from clmkit.tasks.base import TaskItem
from tests.conftest import loaded_text_model

TOLERANCE = 1e-4  # fp32: the tree forward and the full forward differ only by summation order


def plain_logprob(module, context: list[int], continuation: list[int]) -> float:
    """The definition: one causal forward over context + continuation, sum the continuation's log-probs."""
    with torch.inference_mode():
        logits = module(input_ids=torch.tensor([context + continuation])).logits[0].float().log_softmax(-1)
    n = len(context)
    return sum(float(logits[n - 1 + j, t]) for j, t in enumerate(continuation))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_tree_scores_equal_one_forward_per_choice(tiny_models, tokenizer, arch):
    model = tiny_models[arch]
    context = tokenizer("the quick brown fox jumps over")["input_ids"]
    words = [" the lazy dog", " the", " hello world", " 1 2 3", " the quick"]  # shared first tokens
    continuations = [tokenizer(w)["input_ids"] for w in words]
    scores = score_continuations(Forward(model.module), context, continuations)
    for continuation, score in zip(continuations, scores):
        assert score.logprob == pytest.approx(plain_logprob(model.module, context, continuation), abs=TOLERANCE)
        assert score.tokens == len(continuation)


def test_the_trie_shares_prefixes():
    tree, paths = choice_trie(7, [[1, 2, 3], [1, 2, 4], [5], [1]])
    assert tree.tokens.tolist() == [7, 1, 2, 3, 4, 5]
    assert paths == [[1, 2, 3], [1, 2, 4], [5], [1]]
    assert tree.parents.tolist() == [-1, 0, 1, 2, 2, 0]


def test_is_greedy_matches_the_argmax(tiny_llama, tokenizer):
    module = tiny_llama.module
    context = tokenizer("hello world, hello")["input_ids"]
    with torch.inference_mode():
        best = int(module(input_ids=torch.tensor([context])).logits[0, -1].argmax())
    other = (best + 1) % len(tokenizer)
    greedy, not_greedy = score_continuations(Forward(module), context, [[best], [other]])
    assert greedy.is_greedy and not not_greedy.is_greedy and greedy.logprob > not_greedy.logprob


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tokenizer):
    context, continuation = encode_pair(tokenizer, "hello world ", "there")
    assert context == tokenizer("hello world")["input_ids"]
    assert tokenizer.decode(context + continuation) == "hello world there"


def test_empty_inputs_are_clear_errors(tiny_llama):
    forward = Forward(tiny_llama.module)
    with pytest.raises(InputError):
        score_continuations(forward, [], [[1]])
    with pytest.raises(InputError):
        score_continuations(forward, [1, 2], [[3], []])


def test_a_prompt_longer_than_the_context_is_a_clear_error(tiny_llama):
    with pytest.raises(InputError, match="context of 256 tokens"):
        loaded_text_model(tiny_llama).loglikelihood("hello " * 300, ["yes", "no"])


def test_pick_acc_and_acc_norm():
    # acc: raw log-prob; acc_norm: per character (lm-eval); "no" (2 chars) vs "yes" (3 chars)
    assert pick([-3.0, -2.5], ["yes", "no"], normalise=False) == 1
    assert pick([-3.0, -2.5], ["yes", "no"], normalise=True) == 0  # -1.0 > -1.25


def items() -> list[TaskItem]:
    return [TaskItem("yn", "Is the fox quick?", "yes", ["yes", "no"], {"answer_format": "yes/no", "task": "toy"}),
            TaskItem("mc", "Which is a dog?\nA. fox\nB. dog\nAnswer:", 1, ["fox", "dog"],
                     {"answer_format": "choice", "choice_labels": ["A", "B"], "task": "toy"}),
            TaskItem("num", "What is 1 + 1?", 2.0, None, {"answer_format": "number", "task": "toy"})]


@pytest.mark.parametrize("chat", [False, True])
def test_direct_ll_predicts_the_most_likely_choice(tiny_llama, tokenizer, tmp_path, chat):
    model = loaded_text_model(tiny_llama, chat=chat)
    records = run(items(), model, "direct-ll", tmp_path / "p.jsonl", task="toy")
    by_id = {r["id"]: r for r in records}
    for item_id, choices in (("yn", ["yes", "no"]), ("mc", ["A", "B"])):
        step = by_id[item_id]["steps"][0]
        assert step["scoring"] == "loglikelihood" and list(step["logprobs"]) == choices
        # each choice's log-prob is the plain one-forward definition of the same text
        context = model.engine.encode(step["prompt"], chat=chat)
        for choice, logprob in step["logprobs"].items():
            if chat:
                continuation = tokenizer(choice[:1].upper() + choice[1:], add_special_tokens=False)["input_ids"]
            else:
                context, continuation = encode_pair(tokenizer, step["prompt"], " " + choice)
            assert logprob == pytest.approx(plain_logprob(tiny_llama.module, context, continuation), abs=TOLERANCE)
        values = list(step["logprobs"].values())
        best = max(range(2), key=values.__getitem__)
        assert by_id[item_id]["prediction"] == (choices[best] if item_id == "yn" else best)
        assert by_id[item_id]["prediction_norm"] == (
            ["yes", "no"][pick(values, choices, True)] if item_id == "yn" else pick(values, choices, True))
    assert by_id["num"]["steps"][0]["scoring"] == "generate"  # open-form: generated, and the trace says so
    m = metrics(records)
    # acc_norm covers the same items as acc: the generated one counts with its single prediction
    assert m["acc_norm"] == pytest.approx((by_id["yn"]["score_norm"] + by_id["mc"]["score_norm"] + by_id["num"]["score"]) / 3)


def test_direct_ll_on_a_model_without_log_probs_is_a_recorded_error(tmp_path):
    records = run(items()[:1], FakeModel(["yes"]), "direct-ll", tmp_path / "p.jsonl")
    assert "direct-ll needs log-probabilities" in records[0]["error"] and records[0]["score"] == 0.0


@pytest.mark.embedded
def test_embedded_model_tree_scores_equal_one_forward_per_choice(embedded_model):
    from clmkit.reasoning.loglik import model_loglikelihood

    engine = Engine(embedded_model)
    prompt = "Does smoking cause lung cancer? Answer with yes or no.\nAnswer:"
    choices = ["yes", "maybe not"]  # one and two tokens
    scores = model_loglikelihood(engine, prompt, choices, chat=True)
    context = engine.encode(prompt, chat=True)
    for choice, score in zip(choices, scores):
        continuation = embedded_model.tokenizer(choice[:1].upper() + choice[1:], add_special_tokens=False)["input_ids"]
        assert score.logprob == pytest.approx(plain_logprob(embedded_model.module, context, continuation), abs=TOLERANCE)
