"""Corr2Cause: the solver on hand-made and real rows, and the generator's format and determinism."""

from __future__ import annotations

import csv
import io

import pytest

from clmkit.causal.solve import _equivalence_class, parse_corr2cause, solve_corr2cause
from clmkit.tasks import corr2cause
from tests.causal.corr2cause_original_labels import generator_label

# Rows of test_public.csv where the engine and the gold label disagree. Each one is a label the
# original generator got wrong through its permutation-index bug (docs/causal.md, "Corr2Cause").
GOLD_LABEL_ERRORS = [75, 224, 393, 445, 511, 552, 556, 609, 645, 745, 795]

COLLIDER = ("Premise: Suppose there is a closed system of 3 variables, A, B and C. All the statistical relations "
            "among these 3 variables are as follows: A correlates with C. B correlates with C. "
            "However, A is independent of B.\nHypothesis: {}")


@pytest.mark.parametrize("hypothesis, answer", [
    ("A directly causes C.", "yes"),
    ("C directly causes A.", "no"),
    ("A directly causes B.", "no"),
    ("There exists at least one collider (i.e., common effect) of A and B.", "yes"),
    ("There exists at least one confounder (i.e., common cause) of A and B.", "no"),
    ("A causes something else which causes C.", "no"),
    ("B is a cause for C, but not a direct one.", "no"),
])
def test_collider_premise(hypothesis, answer):
    solution = solve_corr2cause(COLLIDER.format(hypothesis))
    assert (solution.status, solution.prediction) == ("ok", answer)


@pytest.mark.parametrize("text, fragment", [
    (COLLIDER.format("A is the favourite of C."), "cannot read the hypothesis"),
    (COLLIDER.format("A directly causes Q."), "unknown variable"),
    (COLLIDER.format("A directly causes A."), "itself"),
    (COLLIDER.replace("Hypothesis: {}", ""), "no 'Hypothesis:'"),
    (COLLIDER.replace("A correlates with C.", "A loves C.").format("A directly causes C."), "cannot read the statement"),
    (COLLIDER.replace("3 variables, A, B and C", "4 variables, A, B and C").format("A directly causes C."), "Premise"),
    ("Hypothesis: A directly causes B.", "premise"),
])
def test_unreadable_rows_are_unparsed(text, fragment):
    solution = solve_corr2cause(text)
    assert solution.status == "unparsed" and solution.prediction is None
    assert fragment.lower() in solution.detail.lower()


def test_contradictory_premises_are_inconsistent():
    both = COLLIDER.format("A directly causes C.").replace("However, A is independent of B.", "A correlates with B. However, A is independent of B.")
    assert solve_corr2cause(both).status == "inconsistent"
    unfaithful = ("Premise: Suppose there is a closed system of 3 variables, A, B and C. All the statistical relations among "
                  "these 3 variables are as follows: A correlates with B. A correlates with C. B correlates with C. However, "
                  "A and B are independent given C. A and C are independent given B.\nHypothesis: A directly causes B.")
    solution = solve_corr2cause(unfaithful)
    assert solution.status == "inconsistent" and "no DAG" in solution.detail


def test_too_many_variables_is_refused_not_guessed():
    names = list("ABCDEFGH")
    text = (f"Premise: Suppose there is a closed system of 8 variables, {', '.join(names[:-1])} and H. All the statistical "
            f"relations among these 8 variables are as follows: A correlates with B.\nHypothesis: A directly causes B.")
    solution = solve_corr2cause(text)
    assert solution.status == "too_large" and solution.prediction is None


def test_real_file_agreement(corr2cause_rows):
    misses = []
    for i, row in enumerate(corr2cause_rows):
        solution = solve_corr2cause(row["input"])
        assert solution.status == "ok", (i, solution)
        if solution.prediction != ("yes" if row["label"] == "1" else "no"):
            misses.append(i)
    assert misses == GOLD_LABEL_ERRORS
    assert 1 - len(misses) / len(corr2cause_rows) >= 0.986


def test_every_miss_is_the_generators_index_bug(corr2cause_rows):
    """Emulating the original generator reproduces the gold label on each miss; fixing its bug gives ours."""
    controls = list(range(0, len(corr2cause_rows), 101))   # agreeing rows: the emulation matches there too
    for i in GOLD_LABEL_ERRORS + controls:
        row = corr2cause_rows[i]
        problem = parse_corr2cause(row["input"])
        dags = list(_equivalence_class(problem.variables, problem.independencies))
        ours = int(solve_corr2cause(row["input"]).prediction == "yes")
        assert generator_label(problem, dags, index_bug=True) == int(row["label"]), i
        assert generator_label(problem, dags, index_bug=False) == ours, i


def test_premises_render_exactly_as_the_real_file(corr2cause_rows):
    for row in corr2cause_rows[::7]:
        problem = parse_corr2cause(row["input"])
        premise = corr2cause.premise_text(list(problem.variables), problem.independencies)
        assert row["input"].startswith(premise + "\nHypothesis: ")


def test_loader(corr2cause_rows):
    items = corr2cause.load(limit=5)
    assert len(items) == 5 and items[0].prompt == corr2cause_rows[0]["input"]
    assert items[0].answer in ("yes", "no") and items[0].meta["template"] in corr2cause.TEMPLATES
    assert isinstance(items[0].meta["num_variables"], int)


def test_generator_is_reproducible_and_in_format():
    items = corr2cause.generate(30, seed=7)
    again = corr2cause.generate(30, seed=7)
    assert [(i.prompt, i.answer) for i in items] == [(i.prompt, i.answer) for i in again]
    assert [i.prompt for i in corr2cause.generate(5, seed=8)] != [i.prompt for i in items[:5]]
    assert {i.meta["template"] for i in items} == set(corr2cause.TEMPLATES)
    assert {i.meta["num_variables"] for i in items} == {2, 3, 4, 5, 6}
    assert {i.answer for i in items} == {"yes", "no"}
    for item in items:
        solution = solve_corr2cause(item.prompt)          # the text reads back into the same question
        assert (solution.status, solution.prediction) == ("ok", item.answer)
        problem = parse_corr2cause(item.prompt)
        assert item.prompt.startswith(corr2cause.premise_text(list(problem.variables), problem.independencies))


def test_generated_csv_reads_back_like_the_real_file(tmp_path):
    items = corr2cause.generate(6, seed=1)
    path = tmp_path / "gen.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        corr2cause.write_csv(items, f)
    assert path.read_bytes().startswith(b"input,label,num_variables,template\r\n\"Premise: ")
    back = corr2cause.load(path)
    assert [(i.prompt, i.answer, i.meta["template"]) for i in back] == [(i.prompt, i.answer, i.meta["template"]) for i in items]
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert all(r["label"] in ("0", "1") for r in rows)
