"""Each strategy with a scripted FakeModel: what it asks, how many calls, and what it concludes."""

from __future__ import annotations

from clmkit.reasoning.agent import graph_tool, run_tool, scm_tool
from clmkit.reasoning.answers import extract
from clmkit.reasoning.lm import FakeModel
from clmkit.reasoning.strategies import STRATEGIES, question_text, re2_prompt
from clmkit.tasks.base import TaskItem

QUESTION = "Zuph has a direct effect on rixq. Does zuph cause rixq?"
ITEM = TaskItem("t-1", QUESTION + "\nAnswer (Yes or No ?):", "yes", ["yes", "no"], {"answer_format": "yes/no", "task": "toy"})


def test_registry_names():
    assert {"direct", "cot", "re2", "coin", "agent", "solver"} <= set(STRATEGIES)


def test_question_text_drops_the_answer_cue():
    assert question_text(ITEM) == QUESTION


def test_direct_asks_once_with_the_answer_format():
    model = FakeModel(["Yes."])
    attempt = STRATEGIES["direct"](model, ITEM)
    assert len(model.calls) == 1 and "Answer with yes or no." in model.calls[0]
    assert extract(ITEM, attempt.output) == "yes"


def test_cot_reasons_then_reads_the_answer():
    model = FakeModel(["Zuph points at rixq, so it causes it.", " yes"])
    attempt = STRATEGIES["cot"](model, ITEM)
    assert model.calls[0].endswith("A: Let's think step by step.")
    assert "Therefore, the answer (yes or no) is" in model.calls[1]
    assert "Zuph points at rixq" in model.calls[1]  # the second call sees the reasoning
    assert extract(ITEM, attempt.output) == "yes" and len(attempt.steps) == 2


def test_re2_reads_the_question_twice():
    model = FakeModel(["It does.", "yes"])
    STRATEGIES["re2"](model, ITEM)
    prompt = model.calls[0]
    assert prompt.count(QUESTION) == 2
    assert prompt.startswith(f"Q: {QUESTION}\nRead the question again: {QUESTION}\n")
    assert prompt.endswith("A: Let's think step by step.")
    assert re2_prompt("q?") == "Q: q?\nRead the question again: q?\nA: Let's think step by step."


def test_coin_backtracks_past_a_contradiction():
    replies = iter([
        "RULE: zuph causes rixq\nTARGET: rixq",       # extraction
        "zuph = yes because it is given",            # step 1
        "rixq = no because I guessed",               # step 2 (wrong)
        "ANSWER: no",                                 # proposal
        "CONTRADICTION: rixq",                        # check -> backtrack
        "rixq = yes because zuph causes rixq",       # re-derived
        "ANSWER: yes",
        "CONSISTENT",
    ])
    model = FakeModel(lambda prompt: next(replies))
    attempt = STRATEGIES["coin"](model, ITEM)
    assert extract(ITEM, attempt.output) == "yes"
    backtracks = [s for s in attempt.steps if "backtrack" in s]
    assert backtracks == [{"backtrack": "rixq", "dropped": ["rixq = no because I guessed"]}]
    after = model.calls[5]  # the step after backtracking shows the note, not the dropped line
    assert "backtracked: rixq = no because I guessed" in after and "zuph = yes" in after


def test_coin_is_bounded():
    model = FakeModel(lambda prompt: "ANSWER: yes" if "Next line" in prompt else "CONTRADICTION: x")
    attempt = STRATEGIES["coin"](model, ITEM, max_steps=5, max_backtracks=2)
    assert len(model.calls) <= 1 + 5 * 2 and extract(ITEM, attempt.output) == "yes"


def test_agent_describes_the_problem_and_calls_the_engine():
    replies = iter([
        " The graph has one edge.\nAction: graph\nAction Input: edges: zuph -> rixq | ask: ancestor zuph rixq",
        " The engine says yes.\nFinal Answer: yes",
    ])
    model = FakeModel(lambda prompt: next(replies))
    attempt = STRATEGIES["agent"](model, ITEM)
    tool_calls = [s for s in attempt.steps if "tool" in s]
    assert tool_calls == [{"tool": "graph", "input": "edges: zuph -> rixq | ask: ancestor zuph rixq", "observation": "yes"}]
    assert "Observation: yes" in model.calls[1]
    assert extract(ITEM, attempt.output) == "yes"


def test_agent_falls_back_on_the_engine_answer():
    replies = iter(["Action: graph\nAction Input: edges: zuph -> rixq | ask: parent zuph rixq"] + ["I am not sure."] * 10)
    model = FakeModel(lambda prompt: next(replies))
    attempt = STRATEGIES["agent"](model, ITEM, max_steps=2)
    assert attempt.prediction == "yes"
    assert {"prediction_from": "engine", "engine_answer": "yes"} in attempt.steps


def test_agent_tools_report_bad_descriptions_as_observations():
    assert run_tool("graph", "edges: A -> B, B -> A | ask: ancestor A B").startswith("error: the causal graph has a cycle")
    assert "unknown variable" in run_tool("graph", "edges: A -> B | ask: parent A Q")
    assert run_tool("graph", "nonsense").startswith("error:")
    assert run_tool("telescope", "x").startswith("error: unknown tool")
    assert graph_tool("edges: A -> B, B -> C | ask: d-separated A C given B") == "yes"
    assert graph_tool("edges: Z -> X, Z -> Y, X -> Y | ask: backdoor X Y given Z") == "yes"
    assert graph_tool("edges: A -> C, B -> C | ask: collider A B") == "yes"
    assert scm_tool("rules: C := A and not B | observe: A=1, B=0 | do: B=1 | ask: C") == "no"
    assert scm_tool("rules: C := A or B | do: A=1 | ask: C") == "yes"
    assert run_tool("scm", "rules: C := A | ask: D").startswith("error:")


def test_solver_strategy_uses_no_model():
    model = FakeModel([])
    attempt = STRATEGIES["solver"](model, ITEM)  # no exact solver for a toy task: unparsed
    assert attempt.prediction is None and model.calls == []
