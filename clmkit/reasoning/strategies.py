"""Prompting strategies: how a model is asked one benchmark item. `STRATEGIES[name](model, item)`.

    direct  the question and the answer format, answer at once
    direct-ll  the direct prompt, answered by log-likelihood of each choice, no generation
            (lm-eval's `loglikelihood`; acc and acc_norm; clmkit/reasoning/loglik.py)
    cot     zero-shot chain of thought (Kojima et al. 2022): "Let's think step by step.", then a
            second call "Therefore, the answer (...) is" to read the answer off the reasoning
    re2     re-reading (Xu et al., EMNLP 2024) with CoT:
            "Q: {question}\\nRead the question again: {question}\\n" + the CoT trigger
    coin    CounterBench's CoIn: extract the rules, derive variables one step at a time, check the
            derivations and backtrack past a contradiction (clmkit/reasoning/coin.py)
    agent   the Causal Agent idea: the LM describes the problem in a fixed format and calls the
            exact causal engine as a tool in a ReAct loop (clmkit/reasoning/agent.py)
    jrt     JRT-Prompt (Arora et al. 2024): the whole input read twice, then a direct answer
            (clmkit/prompting/jrt.py)
    solver  no LM: the exact engine reads the formal benchmarks (CLadder, Corr2Cause, CounterBench,
            axiomatic, CaLM's CLadder-style tasks); anything else, or an unreadable row, is unparsed

Each returns an `Attempt`: the text the answer is read from, optionally a prediction the strategy
decided itself (the agent's engine verdict), and every model call made (for the JSONL record).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from clmkit.reasoning.answers import extract
from clmkit.reasoning.lm import TextModel
from clmkit.tasks.base import TaskItem

COT_TRIGGER = "Let's think step by step."
ANSWER_TOKENS = 24  # the short answer calls
REASONING_TOKENS = 256  # the chain-of-thought calls


@dataclass
class Attempt:
    output: str  # the text the answer is extracted from
    prediction: Any = None  # set when the strategy itself decided the answer
    steps: list[dict] = field(default_factory=list)  # {"prompt": ..., "response": ...} per model call
    prediction_norm: Any = None  # direct-ll: the answer by length-normalised log-likelihood (acc_norm)


def ask(model: TextModel, attempt: Attempt, prompt: str, max_new_tokens: int, stop: list[str] | None = None) -> str:
    """One model call, recorded in the attempt."""
    response = model.complete(prompt, max_new_tokens=max_new_tokens, stop=stop)
    attempt.steps.append({"prompt": prompt, "response": response})
    return response


def choice_labels(item: TaskItem) -> list[str]:
    """How the options are labelled in the prompt: meta["choice_labels"], else A, B, C, ..."""
    return list(item.meta.get("choice_labels") or [chr(ord("A") + i) for i in range(len(item.choices or []))])


def answer_hint(item: TaskItem) -> str:
    fmt = item.meta.get("answer_format", "yes/no")
    if fmt == "yes/no":
        return "Answer with yes or no."
    if fmt == "choice":
        return f"Answer with the label of one option ({', '.join(choice_labels(item))})."
    if fmt == "number":
        return "Answer with one number, rounded to four decimal places."
    return "Answer with one short sentence."


def answer_words(item: TaskItem) -> str:
    """What goes in "Therefore, the answer (...) is"."""
    fmt = item.meta.get("answer_format", "yes/no")
    if fmt == "yes/no":
        return "yes or no"
    if fmt == "choice":
        return " or ".join(choice_labels(item))
    return "a number" if fmt == "number" else "one sentence"


_ANSWER_CUE_LINE = re.compile(r"\n?\s*Answer[^\n]*:\s*$")


def question_text(item: TaskItem) -> str:
    """The item's prompt without a trailing "Answer ...:" cue line (strategies add their own)."""
    return _ANSWER_CUE_LINE.sub("", item.prompt.rstrip()).rstrip()


def direct(model: TextModel, item: TaskItem) -> Attempt:
    attempt = Attempt("")
    prompt = f"{question_text(item)}\n{answer_hint(item)}\nAnswer:"
    attempt.output = ask(model, attempt, prompt, ANSWER_TOKENS if item.meta.get("answer_format") != "text" else 64,
                         stop=["\n\n"])
    return attempt


def _two_stage(model: TextModel, item: TaskItem, prompt: str) -> Attempt:
    """Reason, then ask for the answer after the reasoning (zero-shot-CoT answer extraction)."""
    attempt = Attempt("")
    reasoning = ask(model, attempt, prompt, REASONING_TOKENS)
    final = ask(model, attempt, f"{prompt} {reasoning.strip()}\nTherefore, the answer ({answer_words(item)}) is",
                ANSWER_TOKENS, stop=["\n"])
    attempt.output = f"The answer is {final.strip()}"
    if extract(item, attempt.output) is None:  # fall back to an explicit answer inside the reasoning
        attempt.output = reasoning
    return attempt


def cot(model: TextModel, item: TaskItem) -> Attempt:
    return _two_stage(model, item, f"Q: {question_text(item)}\n{answer_hint(item)}\nA: {COT_TRIGGER}")


def re2_prompt(question: str, hint: str = "") -> str:
    """RE2 + CoT, as in the paper: the question, "Read the question again:", the question, the trigger."""
    middle = f"{hint}\n" if hint else ""
    return f"Q: {question}\nRead the question again: {question}\n{middle}A: {COT_TRIGGER}"


def re2(model: TextModel, item: TaskItem) -> Attempt:
    return _two_stage(model, item, re2_prompt(question_text(item), answer_hint(item)))


def solver(model: TextModel, item: TaskItem) -> Attempt:
    """No LM at all: the exact engine reads the formal benchmark's text (unparsed -> no prediction)."""
    from clmkit.causal import cladder
    from clmkit.causal.solve import solve_axiomatic, solve_corr2cause, solve_counterbench

    task = str(item.meta.get("task", ""))
    attempt = Attempt("")
    if task == "corr2cause":
        found = solve_corr2cause(item.prompt)
    elif task == "counterbench" and "question" in item.meta:
        found = solve_counterbench(item.meta["question"], item.meta["given_info"])
    elif task == "axiomatic":
        found = solve_axiomatic(item.prompt)
    elif question_text(item).startswith(cladder.PREAMBLE.strip()):  # CLadder, and CaLM's CLadder-style tasks
        s = cladder.solve(question_text(item))
        attempt.prediction = s.answer
        attempt.steps.append({"engine": "cladder", "detail": s.reason})
        return attempt
    else:
        attempt.steps.append({"engine": None, "detail": f"no exact solver for task {task!r}"})
        return attempt
    attempt.prediction = found.prediction
    attempt.steps.append({"engine": task, "status": found.status, "detail": found.detail})
    return attempt


def _coin(model: TextModel, item: TaskItem, **options) -> Attempt:
    from clmkit.reasoning.coin import coin

    return coin(model, item, **options)


def _direct_ll(model: TextModel, item: TaskItem) -> Attempt:
    from clmkit.reasoning.loglik import direct_ll

    return direct_ll(model, item)


def _agent(model: TextModel, item: TaskItem, **options) -> Attempt:
    from clmkit.reasoning.agent import agent

    return agent(model, item, **options)


def _jrt(model: TextModel, item: TaskItem) -> Attempt:
    from clmkit.prompting.jrt import jrt

    return jrt(model, item)


Strategy = Callable[[TextModel, TaskItem], Attempt]
STRATEGIES: dict[str, Strategy] = {"direct": direct, "direct-ll": _direct_ll, "cot": cot, "re2": re2, "coin": _coin, "agent": _agent,
                                   "solver": solver, "jrt": _jrt}
