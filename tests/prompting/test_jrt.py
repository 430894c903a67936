"""JRT-Prompt's prompt construction, the generated recall task, and the `jrt` strategy."""

from __future__ import annotations

import pytest

from clmkit.errors import InputError
from clmkit.prompting.jrt import jrt, jrt_prompt, recall_correct, recall_items
from clmkit.reasoning.lm import FakeModel
from clmkit.tasks.base import TaskItem


def test_prompt_repeats_context_and_question():
    prompt = jrt_prompt("k1: 3\nk2: 7", "What is k2?")
    assert prompt == "k1: 3\nk2: 7\n\nWhat is k2?\n\nk1: 3\nk2: 7\n\nWhat is k2?\nAnswer:"
    assert jrt_prompt("c", "q", repeats=1) == "c\n\nq\nAnswer:"
    assert jrt_prompt("c", "q", repeats=3).count("c\n\nq") == 3


def test_recall_items_are_exact_and_seeded():
    items = recall_items(5, pairs=16, seed=3)
    assert [i.meta["context"] for i in items] == [i.meta["context"] for i in recall_items(5, pairs=16, seed=3)]
    assert items[0].meta["context"] != recall_items(5, pairs=16, seed=4)[0].meta["context"]
    for item in items:
        lines = item.meta["context"].splitlines()[1:]
        assert len(lines) == 16 and len({l.split(":")[0] for l in lines}) == 16
        key = item.meta["question"].split("'")[1]
        assert f"{key}: {item.answer}" in lines  # the asked key maps to exactly the gold value
        assert item.meta["context"].count(item.answer) == 1


def test_grading():
    assert recall_correct(" 4821", "4821") and recall_correct("The value is 4821.", "4821")
    assert not recall_correct("4822", "4821") and not recall_correct("", "4821")
    assert not recall_correct("1234 or 4821", "4821")  # the first value given counts


def test_strategy_reads_twice():
    item = TaskItem("x", "Is the sky blue?\nAnswer:", "yes", meta={"answer_format": "yes/no"})
    model = FakeModel(["yes"])
    attempt = jrt(model, item)
    assert model.calls[0].count("Is the sky blue?") == 2 and model.calls[0].endswith("Answer:")
    assert attempt.output == "yes"
    with_context = recall_items(1, pairs=4)[0]
    jrt(model, with_context)
    assert model.calls[1].count(with_context.meta["context"]) == 2


def test_bad_input():
    with pytest.raises(InputError):
        jrt_prompt("c", "q", repeats=0)
    with pytest.raises(InputError):
        jrt_prompt(" ", "q")
    with pytest.raises(InputError):
        recall_items(0)


def test_registered_as_a_reasoning_strategy():
    from clmkit.reasoning.strategies import STRATEGIES

    item = TaskItem("x", "Is the sky blue?", "yes", meta={"answer_format": "yes/no"})
    model = FakeModel(["yes"])
    STRATEGIES["jrt"](model, item)
    assert model.calls[0].count("Is the sky blue?") == 2
