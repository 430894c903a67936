"""CoIn (Chen et al., *CounterBench*, 2025): iterative counterfactual reasoning with backtracking.

The paper's paradigm has two phases, re-implemented here from its description (the prompts are ours):
1. extraction — the model lists the causal rules, the observed facts, the supposition(s) and the
   target as separate lines;
2. iterative reasoning — one call per step derives the value of one more variable from the
   extracted information and the derivations so far, until the model states the answer. Before an
   answer is accepted the model checks every derivation against the rules; when it names a
   contradiction, the derivations from that variable on are discarded and reasoning resumes from
   the last consistent state (backtracking), at most `max_backtracks` times.
All loops are bounded (`max_steps` derivations), so a model that never concludes costs a fixed
number of calls and then answers from what it derived.
"""

from __future__ import annotations

import re

from clmkit.reasoning.lm import TextModel
from clmkit.reasoning.strategies import ANSWER_TOKENS, Attempt, answer_words, ask, question_text
from clmkit.tasks.base import TaskItem

MAX_STEPS = 8
MAX_BACKTRACKS = 2

EXTRACT = (
    "Read the problem and list its parts, one per line:\n"
    "RULE: each causal rule, as written (e.g. 'A causes not B', 'A and B together cause C')\n"
    "FACT: each observed fact\n"
    "SUPPOSE: each supposition or intervention the question makes\n"
    "TARGET: what the question asks about\n\n"
    "Problem: {question}\n\nParts:\n"
)
REASON = (
    "Problem: {question}\n\nParts:\n{parts}\n\nDerived so far:\n{derived}\n\n"
    "Derive the value of one more variable that follows from the rules, facts and suppositions, "
    "written as 'VARIABLE = yes/no because ...'. When the target is known, write 'ANSWER: <{words}>' instead.\n"
    "Next line:"
)
CHECK = (
    "Problem: {question}\n\nParts:\n{parts}\n\nDerivations:\n{derived}\nProposed answer: {answer}\n\n"
    "Check each derivation against the rules, facts and suppositions. If one is wrong, write "
    "'CONTRADICTION: VARIABLE' naming the first wrong one; otherwise write 'CONSISTENT'.\nVerdict:"
)

_ANSWER = re.compile(r"ANSWER\s*:\s*(.+)", re.I)
_CONTRADICTION = re.compile(r"CONTRADICTION\s*:?\s*([^\s,.;:]+)", re.I)


def _variable(line: str) -> str:
    m = re.match(r"\s*([^=\s]+)\s*=", line)
    return m.group(1).lower() if m else ""


def coin(model: TextModel, item: TaskItem, max_steps: int = MAX_STEPS, max_backtracks: int = MAX_BACKTRACKS) -> Attempt:
    attempt = Attempt("")
    question = question_text(item)
    words = answer_words(item)
    parts = ask(model, attempt, EXTRACT.format(question=question), 200).strip()
    derived: list[str] = []
    notes: list[str] = []  # what backtracking ruled out, shown to the model
    backtracks = 0
    answer = None
    for _ in range(max_steps):
        shown = "\n".join(derived + notes) or "(nothing yet)"
        line = ask(model, attempt, REASON.format(question=question, parts=parts, derived=shown, words=words),
                   80, stop=["\n"]).strip()
        proposed = _ANSWER.search(line)
        if not proposed:
            if not line or line in derived:  # no progress: stop deriving
                break
            derived.append(line)
            continue
        verdict = ask(model, attempt, CHECK.format(question=question, parts=parts, derived="\n".join(derived) or "(none)",
                                                   answer=proposed.group(1).strip()), 40, stop=["\n"])
        wrong = _CONTRADICTION.search(verdict)
        if wrong and backtracks < max_backtracks:
            backtracks += 1
            name = wrong.group(1).lower()
            cut = next((i for i, d in enumerate(derived) if _variable(d) == name), len(derived) - 1)
            dropped = derived[max(cut, 0):]
            derived = derived[:max(cut, 0)]
            notes.append(f"(backtracked: {'; '.join(dropped) or 'the answer'} contradicted the rules)")
            attempt.steps.append({"backtrack": name, "dropped": dropped})
            continue
        answer = proposed.group(1).strip()
        break
    if answer is None:  # out of steps: answer from what was derived
        shown = "\n".join(derived) or "(nothing)"
        answer = ask(model, attempt, f"Problem: {question}\n\nParts:\n{parts}\n\nDerived:\n{shown}\n\n"
                                     f"Therefore, the answer ({words}) is", ANSWER_TOKENS, stop=["\n"]).strip()
    attempt.output = f"The answer is {answer}"
    return attempt
