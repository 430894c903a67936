"""Deterministic SCMs and abduction–action–prediction, and the CounterBench rule parser."""

from __future__ import annotations

import pytest

from clmkit.causal.counterfactual import (
    SCM,
    InconsistentEvidenceError,
    Literal,
    Mechanism,
    MultipleSolutionsError,
    NoSolutionError,
    counterfactual,
)
from clmkit.causal.graph import GraphError
from clmkit.causal.solve import parse_counterbench_rules, solve_counterbench


def m(target, *inputs, gate="and", negated=False):
    return Mechanism(target, tuple(Literal(v.removeprefix("not "), v.startswith("not ")) for v in inputs), gate, negated)


def test_mechanism_truth_tables():
    world = {"A": True, "B": False}
    assert m("C", "A", "B").value(world) is False
    assert m("C", "A", "B", gate="or").value(world) is True
    assert m("C", "A", "not B").value(world) is True
    assert m("C", "A", "B", negated=True).value(world) is True
    assert str(m("C", "A", "not B", gate="or", negated=True)) == "C := not (A or not B)"


def test_abduction_action_prediction():
    # U -> X -> Y <- W: observing Y pins down what X and W were.
    scm = SCM([m("X", "U"), m("Y", "X", "W")])
    assert scm.exogenous == ["U", "W"]
    assert counterfactual(scm, {"Y": True}, {"X": False}, "Y") is False
    assert counterfactual(scm, {"Y": True}, {"U": True}, "W") is True          # abduced W = yes
    assert counterfactual(scm, {}, {"X": True}, "Y") is None                   # W unknown: undetermined
    assert counterfactual(scm, {"Y": False, "U": True}, {"X": True}, "Y") is False  # then W must be no


def test_inconsistent_evidence_and_bad_models():
    scm = SCM([m("B", "A")])
    with pytest.raises(InconsistentEvidenceError):
        counterfactual(scm, {"A": True, "B": False}, {}, "B")
    with pytest.raises(GraphError, match="two mechanisms"):
        SCM([m("B", "A"), m("B", "C")])
    with pytest.raises(GraphError):
        counterfactual(scm, {}, {"Q": True}, "B")


def test_cyclic_rules_are_solved_as_a_system():
    # A -> B <-> C: B := A and not C, C := B or D. With A = yes: B = not C and C = B or D, so
    # D = no forces B = not B ... no world; D = yes gives C = yes, B = no (one world).
    scm = SCM([m("B", "A", "not C"), m("C", "B", "D", gate="or")])
    assert scm.exogenous == ["A", "D"] and scm.cycles == [["B", "C"]]
    assert scm.solutions({"A": True, "D": True}) == [{"A": True, "D": True, "B": False, "C": True}]
    assert scm.solutions({"A": True, "D": False}) == []
    assert len(scm.solutions({"A": False, "D": False})) == 1  # B = no, C = no
    # Abduction keeps only backgrounds with a world: observing A leaves D = yes, so C = yes.
    assert counterfactual(scm, {"A": True}, {}, "C") is True
    # Prediction in the supposed world: do(C = no) cuts the cycle; B = A.
    assert counterfactual(scm, {"A": True}, {"C": False}, "B") is True
    # A supposition under which the equations have no solution is inconsistent ...
    with pytest.raises(NoSolutionError, match="no solutions under do"):
        counterfactual(scm, {"A": True}, {"D": False}, "C")
    # ... and one they solve twice (X := Y, Y := X) leaves the world open: no answer.
    loop = SCM([m("X", "Y"), m("Y", "X"), m("Z", "X", "W")])
    with pytest.raises(MultipleSolutionsError):
        counterfactual(loop, {"W": True}, {}, "Z")
    # Observing X picks one factual world, but the supposed world must be unique on its own:
    with pytest.raises(MultipleSolutionsError, match="2 solutions under do"):
        counterfactual(loop, {"X": True, "W": True}, {"W": False}, "Z")
    assert counterfactual(loop, {"X": True, "W": True}, {"Y": False}, "Z") is False  # do(Y) cuts the loop: X = no
    self_loop = SCM([m("S", "S")])
    with pytest.raises(MultipleSolutionsError):
        self_loop.evaluate({})


def test_rule_parser_reads_every_clause_shape():
    scm, observed = parse_counterbench_rules(
        "We know that Ziklo causes Blaf, Trune and Vork, not Vork causes Sline, Sline and not Blaf together cause Frim, "
        "Frim or Vork causes Qado, Qado causes not Jurf and Lumbo, Zork and Trune together cause not Plik, "
        "Melf or Glent causes Crip, Flen, and Flen causes Zlim. We observed not Melf and Glent.")
    mech = scm.mechanisms
    assert str(mech["Trune"]) == "Trune := Ziklo" and str(mech["Vork"]) == "Vork := Ziklo"
    assert str(mech["Sline"]) == "Sline := not Vork"
    assert str(mech["Frim"]) == "Frim := (Sline and not Blaf)"
    assert str(mech["Qado"]) == "Qado := (Frim or Vork)"
    assert str(mech["Jurf"]) == "Jurf := not Qado" and str(mech["Lumbo"]) == "Lumbo := Qado"
    assert str(mech["Plik"]) == "Plik := not (Zork and Trune)"
    assert str(mech["Crip"]) == str(mech["Flen"]).replace("Flen", "Crip") == "Crip := (Melf or Glent)"
    assert str(mech["Zlim"]) == "Zlim := Flen"
    assert observed == {"Melf": False, "Glent": True}


@pytest.mark.parametrize("question, given, answer", [
    ("Would Lumbo occur if not Ziklo instead of Ziklo?",
     "We know that Ziklo causes Blaf, Blaf causes Trune, Trune causes Vork, and Vork causes Lumbo.", "no"),
    ("Would Lumbo occur if not Ziklo instead of Ziklo?",
     "We know that Ziklo causes not Blaf, Blaf and Trune together cause Vork, Vork causes Lumbo. We observed Trune", "yes"),
    ("Would Klep occur if not Praf and not Vank?",
     "We know that Praf causes Vank and Wrenk, Vank causes not Scud, Scud or Wrenk causes Klep.", "yes"),
    ("Assume not Ziklo, and based on this assumption, further suppose not Sline. Would Lumbo occur?",
     "We know that Ziklo causes Blaf, Trune and Vork, not Vork causes Sline, Sline causes Frim, Frim or Vork causes "
     "Qado, Qado causes Jurf, and Jurf causes Lumbo.", "no"),
])
def test_counterbench_questions(question, given, answer):
    solution = solve_counterbench(question, given)
    assert solution.status == "ok" and solution.prediction == answer


def test_observation_is_a_standing_condition():
    # Scud is a deterministic effect of Praf (factually Scud = no); the observation still holds
    # in the world asked about, as the benchmark intends.
    s = solve_counterbench("Would Klep occur if not Praf instead of Praf?",
                           "We know that Praf causes Vank, not Vank causes Scud, Scud causes Wrenk, Wrenk causes Yobb, "
                           "and not Yobb causes Klep. We observed Scud.")
    assert (s.status, s.prediction) == ("ok", "no")


def test_too_many_root_causes_is_refused():
    roots = [f"R{k}" for k in range(21)]
    given = "We know that " + " or ".join(roots) + " causes Lumbo."
    solution = solve_counterbench("Would Lumbo occur if not R0 and not R1?", given)
    assert solution.status == "too_large" and solution.prediction is None


@pytest.mark.parametrize("question, given, status", [
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "Ziklo causes Lumbo.", "unparsed"),
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "We know that Ziklo makes Lumbo happen.", "unparsed"),
    ("Would Lumbo occur if Ziklo were purple?", "We know that Ziklo causes Lumbo.", "unparsed"),
    ("Would Lumbo occur if not Ziklo instead of Blaf?", "We know that Ziklo causes Lumbo.", "unparsed"),
    ("Would Qux occur if not Ziklo instead of Ziklo?", "We know that Ziklo causes Lumbo.", "unparsed"),
    # cyclic rules: a system of equations, answered only when each world is its only solution
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "We know that Ziklo causes Blaf, Blaf causes Ziklo, Blaf causes Lumbo.", "ok"),
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "We know that Ziklo causes Lumbo, Blaf causes not Vork, and Vork causes Blaf.", "inconsistent"),
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "We know that Ziklo causes Lumbo, Blaf causes Vork, and Vork causes Blaf.", "undetermined"),
    # closed world: a supposed or observed variable no rule mentions is an isolated root; an unmentioned outcome is not readable
    ("Assume not Ziklo, and based on this assumption, further suppose not Melf. Would Lumbo occur?", "We know that Ziklo causes Lumbo.", "ok"),
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "We know that Ziklo or Trune causes Lumbo. We observed Melf", "undetermined"),
    ("Would Lumbo occur if not Melf instead of Melf?", "We know that Ziklo causes Lumbo. We observed Ziklo", "ok"),
    ("Would Lumbo occur if not Ziklo and not Blaf?", "We know that Ziklo and Blaf together cause Lumbo, Trune causes Blaf.", "ok"),
    ("Would Lumbo occur if not Ziklo instead of Ziklo?", "We know that Ziklo or Trune causes Lumbo.", "undetermined"),
])
def test_counterbench_bad_rows(question, given, status):
    solution = solve_counterbench(question, given)
    assert solution.status == status
    assert (solution.prediction is None) == (status != "ok")
    assert solution.detail
