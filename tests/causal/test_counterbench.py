"""CounterBench: the solver on the real file (every miss accounted for) and the generator."""

from __future__ import annotations

import json
import random
from collections import Counter

from hypothesis import given, settings, strategies as st

from clmkit.causal.solve import parse_counterbench_rules, solve_counterbench
from clmkit.tasks import counterbench

# Rows of counterbench_public.jsonl the engine does not answer as the gold does, by reason
# (docs/causal.md, "CounterBench", explains each group).
GOLD_CONTRADICTS_RULES = [247, 248, 249, 250, 260, 261, 262, 263, 268, 269, 270, 271, 310, 311]
GOLD_IGNORES_SECOND_SUPPOSITION = [472, 473, 474, 499, 500, 501, 523, 524, 525, 526, 675, 676, 677, 678]
# Rows that need the two closed-world rules, answered as the gold does (not misses):
CYCLIC_RULES = [230, 231]                       # solved as a system of boolean equations
SUPPOSES_UNMENTIONED_VARIABLE = [603, 604, 605, 606]  # the unmentioned variable is an isolated root


def test_real_file_agreement(counterbench_rows):
    misses, statuses = [], Counter()
    for i, row in enumerate(counterbench_rows):
        solution = solve_counterbench(row["question"], row["given_info"])
        statuses[solution.status] += 1
        if solution.prediction != row["answer"]:
            misses.append(i)
        if i in CYCLIC_RULES + SUPPOSES_UNMENTIONED_VARIABLE:
            assert (solution.status, solution.prediction) == ("ok", row["answer"]), (i, solution)
    assert statuses == {"ok": 700}
    assert misses == sorted(GOLD_CONTRADICTS_RULES + GOLD_IGNORES_SECOND_SUPPOSITION)
    assert 1 - len(misses) / len(counterbench_rows) >= 0.96


def test_ignored_suppositions_are_what_the_gold_computes(counterbench_rows):
    """On those rows the gold equals the answer with only the first supposition applied."""
    for i in GOLD_IGNORES_SECOND_SUPPOSITION:
        row = counterbench_rows[i]
        question = row["question"]
        if question.startswith("Assume"):
            first = question.split(",")[0].removeprefix("Assume ")
            outcome = question.split("Would ")[1].split(" occur")[0]
            reduced = f"Would {outcome} occur if {first} instead of {first.removeprefix('not ')}?"
        else:
            reduced = question.split(" and not ")[0] + " instead of " + question.split("if not ")[1].split(" and")[0] + "?"
        assert solve_counterbench(reduced, row["given_info"]).prediction == row["answer"], i


def test_loader(counterbench_rows):
    items = counterbench.load(limit=3)
    assert [i.answer for i in items] == [r["answer"] for r in counterbench_rows[:3]]
    assert items[0].meta["type"] == "basic" and items[0].meta["question"] in items[0].prompt


def test_generator_is_reproducible_balanced_and_solvable():
    items = counterbench.generate(40, seed=5)
    assert [i.prompt for i in items] == [i.prompt for i in counterbench.generate(40, seed=5)]
    assert [i.prompt for i in items] != [i.prompt for i in counterbench.generate(40, seed=6)]
    assert Counter((i.meta["type"], i.answer) for i in items) == {(t, a): 5 for t in counterbench.TYPES for a in ("yes", "no")}
    for item in items:
        solution = solve_counterbench(item.meta["question"], item.meta["given_info"])
        assert (solution.status, solution.prediction) == ("ok", item.answer), item.prompt
        assert item.meta["given_info"].startswith("We know that ")
        if item.meta["type"] == "conditional":
            assert " We observed " in item.meta["given_info"]


def test_generated_rows_have_the_real_fields(counterbench_rows, tmp_path):
    items = counterbench.generate(8, seed=2)
    path = tmp_path / "gen.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        counterbench.write_jsonl(items, f)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(set(r) == set(counterbench_rows[0]) and set(r["meta"]) == set(counterbench_rows[0]["meta"]) for r in rows)
    back = counterbench.load(path)
    assert [(i.prompt, i.answer) for i in back] == [(i.prompt, i.answer) for i in items]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(4, 9), st.booleans())
def test_rules_text_reads_back_into_the_same_model(seed, size, with_root):
    rng = random.Random(seed)
    names = counterbench.nonsense_names(size, rng)
    extra = names.pop(1) if with_root else None
    mechanisms = counterbench.random_mechanisms(names, rng, extra)
    scm, observed = parse_counterbench_rules(f"We know that {counterbench.rules_text(mechanisms)}.")
    assert observed == {}
    assert {str(m) for m in scm.mechanisms.values()} == {str(m) for m in mechanisms}
