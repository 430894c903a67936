"""The benchmark loaders: counts, answer formats, fields, and the registry."""

from __future__ import annotations

from collections import Counter

import pytest

from clmkit.errors import InputError
from clmkit.tasks import calm, causalnet, cladder, cold
from clmkit.tasks.base import TaskItem
from clmkit.tasks.registry import TASKS, load_task


def test_cladder_loader(require_data):
    require_data("cladder", "cladder_public.csv")
    items = cladder.load()
    assert len(items) == 895
    assert {i.answer for i in items} == {"yes", "no"}
    assert Counter(i.meta["rung"] for i in items) == {1: 290, 2: 269, 3: 336}
    assert len({i.meta["query_type"] for i in items}) == 10
    assert len({i.id for i in items}) == 895
    assert all(i.prompt.endswith("?") and i.meta["answer_format"] == "yes/no" for i in items)


def test_calm_loader_all_46_tasks(require_data):
    require_data("calm", "calm_lite_dataset")
    items = calm.load()
    assert len(items) == 4600
    per_task = Counter(i.meta["task"] for i in items)
    assert len(per_task) == 46 and set(per_task.values()) == {100}
    assert set(Counter(i.meta["level"] for i in items)) == {"causal_discovery", "association", "intervention", "counterfactual"}
    assert {i.meta["rung"] for i in items} == {0, 1, 2, 3}
    formats = Counter(i.meta["answer_format"] for i in items)
    assert formats == {"yes/no": 2300, "number": 1400, "choice": 800, "text": 100}
    for item in items:
        fmt = item.meta["answer_format"]
        if fmt == "yes/no":
            assert item.answer in ("yes", "no")
        elif fmt == "choice":
            assert 0 <= item.answer < len(item.choices) and item.choices[item.answer]
            assert len(item.meta["choice_labels"]) == len(item.choices)
        elif fmt == "number":
            float(item.answer)
        assert item.prompt.strip() and item.id.startswith("calm-")
    assert len({i.id for i in items}) == 4600


def test_calm_prompts_carry_the_question(require_data):
    require_data("calm", "calm_lite_dataset")
    eci = calm.load(["ECI-B_CTB"])[0]
    assert "is there a causal relationship between" in eci.prompt
    crass = calm.load(["CR-C_CRASS"])[0]
    assert crass.answer == 3 and "Option 4: The man would have died." in crass.prompt  # gt "4" is 1-based
    with pytest.raises(ValueError, match="unknown CaLM task"):
        calm.load(["NOT-A-TASK"])


def test_cold_loader(require_data):
    require_data("cold", "causal_query_triplets_sampled_instances_hard")
    hard = cold.load()
    assert len(hard) == 5000
    assert Counter(i.meta["activity"] for i in hard) == {a: 1000 for a in cold.ACTIVITIES}
    assert {i.answer for i in hard} == {0, 1} and all(len(i.choices) == 2 for i in hard)
    assert {i.meta["type"] for i in hard} == {"cause", "effect"}
    first = hard[0]
    assert first.prompt.startswith("Consider the activity of 'baking a cake'") and first.prompt.endswith("Answer:")
    assert f"A. {first.choices[0]}" in first.prompt and f"B. {first.choices[1]}" in first.prompt
    with pytest.raises(ValueError, match="unknown COLD activity"):
        cold.load("hard", ["flying"])


def test_causalnet_loader(require_data):
    require_data("causalnet", "causalnet.json")
    items = causalnet.load()
    assert len(items) == 1000
    assert {i.answer for i in items} == {0, 1, 2} and all(len(i.choices) == 3 for i in items)
    assert all(i.meta["type"] == "cause" for i in items)
    assert "0. " in items[0].prompt and "2. " in items[0].prompt


def test_registry_names_and_lazy_loading():
    assert {"cladder", "calm", "cold", "cold-full", "causalnet", "corr2cause", "counterbench", "axiomatic"} <= set(TASKS)
    with pytest.raises(InputError, match="unknown task 'nope'"):
        load_task("nope")


def test_registry_loads_every_task(require_data):
    require_data("calm", "calm_lite_dataset")
    require_data("corr2cause", "test_public.csv")
    require_data("counterbench", "counterbench_public.jsonl")
    for name in ("cladder", "causalnet", "corr2cause", "counterbench", "axiomatic", "calm:CORR-B_correlation", "cold:planting_a_tree"):
        items = load_task(name)
        assert items and all(isinstance(i, TaskItem) for i in items)
        assert all(i.meta.get("task") and i.meta.get("answer_format") for i in items)
    assert len(load_task("calm:CORR-B_correlation")) == 100
    assert len(load_task("cold:planting_a_tree")) == 1000
    assert len(load_task("axiomatic")) == 500
    with pytest.raises(InputError):
        load_task("calm:NOPE")
