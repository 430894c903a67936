"""The exact CLadder solver: hand-made stories, property tests, and accuracy on the real file."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clmkit.causal.cladder import PREAMBLE, solve
from clmkit.causal.cladder_counterfactual import phrase_relation

CONFOUNDING = (
    "Gender has a direct effect on treatment and recovery. Treatment has a direct effect on recovery. "
    "For patients who are not male and not receiving treatment, the probability of recovery is 20%. "
    "For patients who are not male and receiving treatment, the probability of recovery is 30%. "
    "For patients who are male and not receiving treatment, the probability of recovery is 50%. "
    "For patients who are male and receiving treatment, the probability of recovery is 60%. "
    "The overall probability of male gender is 40%. "
)


def test_ate_by_backdoor_adjustment():
    up = solve(PREAMBLE + CONFOUNDING + "Will receiving treatment increase the chance of recovery?")
    assert (up.answer, up.query_type, up.graph) == ("yes", "ate", "confounding")
    assert up.estimate == pytest.approx(0.10)
    down = solve(PREAMBLE + CONFOUNDING + "Will receiving treatment decrease the chance of recovery?")
    assert down.answer == "no"


def test_ett_and_marginal_questions():
    ett = solve(PREAMBLE + CONFOUNDING + "For patients receiving treatment, would it be more likely to see recovery "
                                         "if the patient had received no treatment?")
    assert (ett.query_type, ett.answer) == ("ett", "no")  # the effect of treatment is +0.10
    marginal = solve(PREAMBLE + "Husband has a direct effect on wife and alarm clock. Wife has a direct effect on "
                     "alarm clock. The overall probability of alarm set by "
                     "husband is 77%. For husbands that don't set the alarm, the probability of ringing alarm is 26%. "
                     "For husbands that set the alarm, the probability of ringing alarm is 76%. "
                     "Is ringing alarm more likely than silent alarm overall?")
    assert marginal.answer == "yes" and marginal.estimate == pytest.approx(0.77 * 0.76 + 0.23 * 0.26)


def test_backdoor_set_question():
    methods = ("Method 1: We look at how treatment correlates with recovery case by case according to gender. "
               "Method 2: We look directly at how treatment correlates with recovery in general. ")
    question = "To understand how treatment affects recovery, is it more correct to use the Method 1 than Method 2?"
    story = CONFOUNDING.split(" For ")[0] + " "
    assert solve(PREAMBLE + story + methods + question).answer == "yes"  # gender is a confounder


def test_deterministic_counterfactual():
    story = ("Rixq has a direct effect on zuph. Zuph has a direct effect on xevu. We know that rixq causes not zuph, "
             "and we know that zuph causes xevu. ")
    assert solve(PREAMBLE + story + "Would an individual is xevu if not rixq instead of rixq?").answer == "yes"
    assert solve(PREAMBLE + story + "Would an individual is not xevu if not rixq instead of rixq?").answer == "no"
    assert solve(PREAMBLE + story + "Would an individual is xevu if rixq instead of not rixq?").answer == "no"


# The diamondcut story in CLadder's words: V1 = swoq, X = kwox, V3 = muvy, Y = kwoz.
DIAMONDCUT = ("Swoq has a direct effect on muvy and kwox. Kwox has a direct effect on kwoz. Muvy has a direct effect "
              "on kwoz. We know that swoq causes {consequents}. kwox and muvy causes kwoz. We observed an individual "
              "is swoq. Would an individual is kwoz if kwox instead of not kwox?")


@pytest.mark.parametrize("consequents, answer", [
    ("not kwox and muvy", "no"),     # muvy := not swoq = no, so kwoz = kwox and muvy = no
    ("not kwox and not muvy", "no"),  # the same rule written out
    ("kwox and muvy", "yes"),        # no negation: muvy := swoq = yes
    ("kwox and not muvy", "no"),     # negation on the second consequent only: muvy := not swoq
])
def test_a_negated_consequent_list_negates_every_consequent(consequents, answer):
    """CLadder's "A causes not B and C" means B := not A and C := not A (its labels follow this
    reading; CounterBench keeps the narrow one, tests/causal/test_counterfactual.py)."""
    assert solve(PREAMBLE + DIAMONDCUT.format(consequents=consequents)).answer == answer


def test_negation_inside_the_first_noun_phrase_spreads_too():
    # "the private not shooting" states the private's value 0 (its value-1 noun is "the private
    # shooting"); the corporal's rule is negated with it.
    story = ("The captain has a direct effect on the private and the corporal. The private has a direct effect on "
             "prisoner. The corporal has a direct effect on prisoner. We know that the captain's order causes the "
             "private not shooting and the corporal shooting. the private shooting or the corporal shooting causes "
             "the prisoner's death. Would the prisoner is dead if the captain's order instead of the captain's "
             "release?")
    assert solve(PREAMBLE + story).answer == "no"
    narrow = story.replace("the private not shooting and the corporal shooting",
                           "the corporal shooting and the private not shooting")
    assert solve(PREAMBLE + narrow).answer == "yes"  # negation on the second phrase: the corporal shoots


@pytest.mark.parametrize("prompt, reason", [
    ("The sky is blue. What is the weather like?", "no 'has a direct effect on'"),
    (PREAMBLE + "Apple has a direct effect on banana. Banana has a direct effect on apple. Is the chance of banana "
     "larger when observing apple?", "cycle"),
    (PREAMBLE + CONFOUNDING + "How are you today?", "unknown question form"),
    (PREAMBLE + "Gender has a direct effect on treatment and recovery. Treatment has a direct effect on recovery. "
     "The overall probability of male gender is 40%. Will receiving treatment increase the chance of recovery?",
     "no template fits"),
    (PREAMBLE + "Rixq has a direct effect on xevu. We know that rixq causes xevu. Would the forest burns down if "
     "rixq instead of not rixq?", "could not be read"),
])
def test_unreadable_rows_are_unparsed_not_guessed(prompt, reason):
    s = solve(prompt)
    assert s.answer is None and not s.parsed
    assert reason in s.reason


def test_phrase_relation():
    assert phrase_relation("the person has tanned skin", "tanned skin") is True
    assert phrase_relation("an individual is not xevu", "xevu") is False
    assert phrase_relation("an individual is xevu", "not xevu") is False
    assert phrase_relation("the employee has a high salary", "low salary") is False
    assert phrase_relation("the person is a nonsmoker", "smoker") is False
    assert phrase_relation("the person is non-female", "female") is False
    assert phrase_relation("the patient is male", "male gender", "gender") is True
    assert phrase_relation("the person goes to the beach", "going to the beach") is True
    assert phrase_relation("the person avoids cholera", "cholera contraction", "cholera") is None


names = st.text(alphabet="bcdfghjklmnpqrstvwxz", min_size=4, max_size=6)
percent = st.integers(min_value=1, max_value=99)


@settings(max_examples=60, deadline=None)
@given(x=names, z=names, y=names, p=st.lists(percent, min_size=5, max_size=5), increase=st.booleans())
def test_ate_on_random_confounded_stories(x, z, y, p, increase):
    """Generated stories in the benchmark's wording: the solver computes the backdoor formula."""
    if len({x, y, z}) < 3:
        return
    conds = [f"not {z}", z]
    treat = [f"not {x}", x]
    lines = [f"{z.capitalize()} has a direct effect on {x} and {y}.", f"{x.capitalize()} has a direct effect on {y}."]
    k = 0
    for a in range(2):
        for b in range(2):
            lines.append(f"For those who are {conds[a]} and are {treat[b]}, the probability of {y} is {p[k]}%.")
            k += 1
    lines.append(f"The overall probability of {z} is {p[4]}%.")
    lines.append(f"Will {x} {'increase' if increase else 'decrease'} the chance of {y}?")
    s = solve(PREAMBLE + " ".join(lines))
    pz = p[4] / 100
    ate = (1 - pz) * (p[1] - p[0]) / 100 + pz * (p[3] - p[2]) / 100
    assert s.graph == "confounding" and s.estimate == pytest.approx(ate)
    expected = "no" if abs(ate) < 0.005 else ("yes" if (ate > 0) == increase else "no")
    assert s.answer == expected


# Rows of cladder_public.csv (by id) the solver does not answer as the gold does, by reason
# (docs/reasoning.md, "Every miss, investigated", explains each group).
ROUNDING_SENSITIVE = [1888, 10904, 16424, 19488, 24960]  # flagged Solution.rounding_sensitive
NOT_IDENTIFIED_FROM_GIVEN_TERMS = [14744, 25288, 25888]   # arrowhead NDE, confounded ETT
UNREAD_WORD_MEANING = [9840, 9872, 10048, 10352, 10376, 20016]  # counterfactuals: unparsed, never guessed


def test_accuracy_on_the_public_file(require_data):
    path = require_data("cladder", "cladder_public.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    outcome = Counter()
    by_type: dict[str, Counter] = {}
    misses: dict[str, list[int]] = {"wrong": [], "unparsed": []}
    for row in rows:
        s = solve(row["prompt"])
        result = "unparsed" if s.answer is None else ("ok" if s.answer == row["label"] else "wrong")
        outcome[result] += 1
        by_type.setdefault(row["query_type"], Counter())[result] += 1
        if result != "ok":
            misses[result].append(int(row["id"]))
        if int(row["id"]) in ROUNDING_SENSITIVE:
            assert s.rounding_sensitive, row["id"]
        if s.answer is None:
            assert s.reason  # every unparsed row says why
    assert sorted(misses["wrong"]) == sorted(ROUNDING_SENSITIVE + NOT_IDENTIFIED_FROM_GIVEN_TERMS)
    assert sorted(misses["unparsed"]) == UNREAD_WORD_MEANING
    accuracy = outcome["ok"] / len(rows)
    assert accuracy >= 0.98, (accuracy, outcome)
    for query_type, c in by_type.items():
        assert c["ok"] / sum(c.values()) >= 0.85, (query_type, c)
