"""The Causal Agent idea (Han et al., *Causal Agent based on Large Language Model*, 2024), with the
exact engine as the tool.

The paper equips an LLM with causal tools in a ReAct loop (reason, call a tool, read the result,
repeat). Here the tools are clmkit's exact engine, and each takes a *structured description* the
model writes in a fixed format — the model's job is to translate the problem, the engine's job is
to answer it:

    graph          "edges: A -> B, B -> C | ask: ancestor A C"
                   ask: parent / child / ancestor / descendant / collider / confounder X Y,
                        d-separated X Y given Z1, Z2 / backdoor X Y given Z1
    scm            "rules: C := A and not B; D := C or A | observe: A=1 | do: B=1 | ask: D"
    corr2cause     the premise and hypothesis text         (clmkit.causal.solve)
    counterbench   the rules, observations and question    (clmkit.causal.solve)
    cladder        the whole story and question            (clmkit.causal.cladder)

The loop is bounded (`max_steps` tool calls). A malformed description, an unknown variable or a
cyclic graph comes back to the model as an "error: ..." observation. When the model's final
answer cannot be read but the last tool call returned an answer, that engine answer is the
prediction (recorded as such in the trace).
"""

from __future__ import annotations

import re
from typing import Callable

import networkx as nx

from clmkit.reasoning.answers import extract
from clmkit.reasoning.lm import TextModel
from clmkit.reasoning.strategies import ANSWER_TOKENS, Attempt, answer_hint, ask, question_text
from clmkit.tasks.base import TaskItem

MAX_STEPS = 4


class ToolError(ValueError):
    """The model's tool input cannot be read."""


def _fields(text: str) -> dict[str, str]:
    out = {}
    for part in text.split("|"):
        key, sep, value = part.partition(":")
        if not sep:
            raise ToolError(f"expected 'key: value' parts separated by '|', got {part.strip()!r}")
        out[key.strip().lower()] = value.strip()
    return out


def _names(text: str) -> list[str]:
    return [n for n in re.split(r"[,\s]+", text.strip()) if n]


def graph_tool(text: str) -> str:
    from clmkit.causal.cladder import is_backdoor_set
    from clmkit.causal.dsep import is_d_separated
    from clmkit.causal.graph import parse_edge_list, require_known
    from clmkit.causal.relations import holds

    f = _fields(text)
    if "edges" not in f or "ask" not in f:
        raise ToolError("the graph tool needs 'edges: ...' and 'ask: ...'")
    g = parse_edge_list(f["edges"])
    ask_text, _, given_text = f["ask"].partition(" given ")
    given = _names(given_text) if given_text else _names(f.get("given", ""))
    words = ask_text.split()
    if len(words) != 3:
        raise ToolError(f"ask must be '<relation> X Y', got {ask_text!r}")
    relation, x, y = words[0].lower(), words[1], words[2]
    require_known(g, [x, y, *given])
    answers: dict[str, Callable[[], bool]] = {
        "parent": lambda: holds("parent", g, x, y),
        "child": lambda: holds("child", g, x, y),
        "ancestor": lambda: nx.has_path(g, x, y) and x != y,
        "descendant": lambda: nx.has_path(g, y, x) and x != y,
        "collider": lambda: holds("has_collider", g, x, y),
        "confounder": lambda: holds("has_confounder", g, x, y),
        "d-separated": lambda: is_d_separated(g, x, y, tuple(given)),
        "backdoor": lambda: is_backdoor_set(g, x, y, set(given)),
    }
    if relation not in answers:
        raise ToolError(f"unknown relation {relation!r}; use one of {', '.join(answers)}")
    return "yes" if answers[relation]() else "no"


def _bits(text: str) -> dict[str, bool]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or value.strip().lower() not in ("1", "0", "yes", "no", "true", "false"):
            raise ToolError(f"write values as NAME=1 or NAME=0, got {part!r}")
        out[name.strip()] = value.strip().lower() in ("1", "yes", "true")
    return out


def scm_tool(text: str) -> str:
    from clmkit.causal.counterfactual import SCM, Literal, Mechanism, counterfactual

    f = _fields(text)
    if "rules" not in f or "ask" not in f:
        raise ToolError("the scm tool needs 'rules: ...' and 'ask: ...'")
    mechanisms = []
    for rule in filter(None, (r.strip() for r in f["rules"].split(";"))):
        target, sep, body = rule.partition(":=")
        if not sep:
            raise ToolError(f"write rules as 'C := A and not B', got {rule!r}")
        body = body.strip()
        negated = bool(re.match(r"not\s*\(", body))
        body = re.sub(r"^not\s*\((.*)\)$", r"\1", body).strip("() ")
        gate = "or" if re.search(r"\sor\s", body) else "and"
        literals = []
        for part in re.split(r"\s+(?:and|or)\s+", body):
            m = re.fullmatch(r"(not\s+)?(\w+)", part.strip())
            if not m:
                raise ToolError(f"cannot read {part.strip()!r} in rule {rule!r}")
            literals.append(Literal(m.group(2), negated=bool(m.group(1))))
        mechanisms.append(Mechanism(target.strip(), tuple(literals), gate, negated))
    scm = SCM(mechanisms)
    value = counterfactual(scm, _bits(f.get("observe", "")), _bits(f.get("do", "")), f["ask"].strip())
    return "undetermined" if value is None else ("yes" if value else "no")


def _engine_answer(solution) -> str:
    if solution.prediction is not None:
        return solution.prediction
    return f"{solution.status}: {solution.detail}"


def corr2cause_tool(text: str) -> str:
    from clmkit.causal.solve import solve_corr2cause

    return _engine_answer(solve_corr2cause(text))


def counterbench_tool(text: str) -> str:
    from clmkit.causal.solve import solve_counterbench

    body, sep, question = text.rstrip().rpartition(". ")
    if not sep or not question.endswith("?"):
        raise ToolError("give the rules and observations, then the question (ending with '?')")
    return _engine_answer(solve_counterbench(question, body + "."))


def cladder_tool(text: str) -> str:
    from clmkit.causal.cladder import solve

    solution = solve(text)
    return solution.answer if solution.answer else f"unparsed: {solution.reason}"


TOOLS: dict[str, tuple[Callable[[str], str], str]] = {
    "graph": (graph_tool, 'questions about a causal graph. Input: "edges: A -> B, B -> C | ask: ancestor A C" '
                          "(ask: parent, child, ancestor, descendant, collider, confounder X Y; "
                          "d-separated X Y given Z; backdoor X Y given Z)"),
    "scm": (scm_tool, 'counterfactuals on yes/no rules. Input: "rules: C := A and not B; D := C or A | '
                      'observe: A=1 | do: B=1 | ask: D"'),
    "corr2cause": (corr2cause_tool, "which causal relations the stated correlations imply. Input: the premise and "
                                    "hypothesis text"),
    "counterbench": (counterbench_tool, "counterfactuals stated as 'X causes Y' rules. Input: the rules, "
                                        "observations and the question"),
    "cladder": (cladder_tool, "probability stories ('... has a direct effect on ...'). Input: the whole story "
                              "and question"),
}


def run_tool(name: str, tool_input: str) -> str:
    """The observation for one tool call; every failure is an 'error: ...' line, never an exception."""
    from clmkit.causal.graph import GraphError

    if name not in TOOLS:
        return f"error: unknown tool {name!r}; use one of {', '.join(TOOLS)}"
    try:
        return TOOLS[name][0](tool_input)
    except (ToolError, GraphError, ValueError, KeyError) as e:
        return f"error: {e}"


AGENT_PROMPT = (
    "Answer the question using the exact causal engine. First describe the problem in a tool's "
    "structured format, then call the tool, then answer.\n\nTools:\n{tools}\n\n"
    "Use this format:\nThought: what to do\nAction: one tool name\nAction Input: the structured description\n"
    "Observation: the tool's answer\n... (at most {steps} actions)\nThought: I know the answer\n"
    "Final Answer: the answer\n\nQuestion: {question}\n{hint}\n"
)

_ACTION = re.compile(r"Action\s*:\s*([\w-]+)\s*\n\s*Action Input\s*:\s*(.+)", re.S | re.I)
_FINAL = re.compile(r"Final Answer\s*:\s*(.*)", re.S | re.I)


def agent(model: TextModel, item: TaskItem, max_steps: int = MAX_STEPS) -> Attempt:
    attempt = Attempt("")
    tools = "\n".join(f"{name}: {doc}" for name, (_, doc) in TOOLS.items())
    transcript = AGENT_PROMPT.format(tools=tools, steps=max_steps, question=question_text(item),
                                     hint=answer_hint(item)) + "Thought:"
    engine_answer = None
    final = None
    for _ in range(max_steps):
        response = ask(model, attempt, transcript, 256, stop=["\nObservation:", "Observation:"])
        transcript += response
        if m := _FINAL.search(response):
            final = m.group(1).strip().split("\n")[0]
            break
        if not (m := _ACTION.search(response)):
            transcript += ("\nObservation: error: no action; write 'Action: <tool>' and 'Action Input: ...', "
                           "or 'Final Answer: ...'\nThought:")
            continue
        name = m.group(1).strip().lower()
        tool_input = re.split(r"\n\s*Thought\s*:", m.group(2))[0].strip().strip('"')
        observation = run_tool(name, tool_input)
        attempt.steps.append({"tool": name, "input": tool_input, "observation": observation})
        if not observation.startswith(("error:", "unparsed", "undetermined", "inconsistent")):
            engine_answer = observation
        transcript += f"\nObservation: {observation}\nThought:"
    if final is None:
        final = ask(model, attempt, transcript + " I know the answer.\nFinal Answer:", ANSWER_TOKENS, stop=["\n"]).strip()
    attempt.output = f"The answer is {final}"
    if extract(item, attempt.output) is None and engine_answer is not None:
        attempt.prediction = extract(item, engine_answer)
        attempt.steps.append({"prediction_from": "engine", "engine_answer": engine_answer})
    return attempt
