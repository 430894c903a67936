"""SeCoT (Yin et al. 2024, "Bridging Code Semantic and LLMs: Semantic Chain-of-Thought Prompting
for Code Generation"): before writing code, the model writes the code's *semantics* -- its data
flow (where each value comes from and goes) and control flow (loops, branches, returns) -- learned
in context from worked examples; then it writes the code conditioned on them.

Code strategies, `CODE_STRATEGIES[name](model, item, code_tokens) -> Attempt` (the answer is the code;
`code_tokens` is the budget of the call that writes it):

    plain    the requirement, "write the code" (zero-shot)
    fewshot  the same worked examples SeCoT sees, requirement -> code only (isolates the semantics)
    cot      zero-shot chain of thought: "Let's think step by step" (no code), then the code
    secot    examples requirement -> data flow -> control flow; the model writes the semantics of
             the new requirement, then the code given requirement + semantics

`program_with_tests(item, code)` is the program the sandbox runs (candidate + the benchmark's tests).
The paper's examples and exact wording are its own; the two examples here are written for this
module (not from the HumanEval/MBPP test splits).
"""

from __future__ import annotations

import re

from clmkit.reasoning.strategies import Attempt, ask
from clmkit.tasks.base import TaskItem

SEMANTICS_TOKENS = 192
CODE_TOKENS = 512  # a coder model restates HumanEval's docstring before the body: 320 cut some

EXAMPLES = [
    {
        "requirement": "Write a function to find the shared elements from the given two lists.\n"
                       "Your code should pass this test:\nassert set(similar_elements([3, 4, 5, 6], [5, 7, 4, 10])) == {4, 5}",
        "data_flow": "The inputs list1 and list2 flow into two sets. Their intersection is the result, "
                     "which flows to the return value as a tuple.",
        "control_flow": "No branches or loops are needed: build the sets, intersect them, return.",
        "code": "def similar_elements(list1, list2):\n    shared = set(list1) & set(list2)\n    return tuple(shared)",
    },
    {
        "requirement": "Complete this Python function:\n```python\ndef count_vowels(text: str) -> int:\n"
                       "    \"\"\"Return how many characters of text are vowels (a, e, i, o, u, either case).\n"
                       "    >>> count_vowels('Hello')\n    2\n    \"\"\"\n```",
        "data_flow": "text flows character by character into ch; ch is lower-cased and compared with "
                     "'aeiou'; each match adds 1 to count, which starts at 0 and flows to the return value.",
        "control_flow": "A for loop over the characters of text; inside it, an if adds 1 to count when ch "
                        "is a vowel; after the loop, return count.",
        "code": "def count_vowels(text: str) -> int:\n    count = 0\n    for ch in text:\n"
                "        if ch.lower() in 'aeiou':\n            count += 1\n    return count",
    },
]


def requirement(item: TaskItem) -> str:
    """The task as the model sees it: HumanEval's stub to complete, MBPP's text + its tests."""
    if item.meta.get("dataset") == "humaneval":
        return f"Complete this Python function:\n```python\n{item.prompt.rstrip()}\n```"
    tests = "\n".join(item.meta.get("test_list", []))
    return f"{item.prompt.strip()}\nYour code should pass these tests:\n{tests}"


def _semantics(example: dict) -> str:
    return f"### Data flow\n{example['data_flow']}\n### Control flow\n{example['control_flow']}"


def _example(example: dict, semantics: bool, code: bool) -> str:
    parts = [f"### Requirement\n{example['requirement']}"]
    if semantics:
        parts.append(_semantics(example))
    if code:
        parts.append(f"### Code\n```python\n{example['code']}\n```")
    return "\n".join(parts)


_WRITE_CODE = "Write the Python code in one ```python code block."


def plain(model, item: TaskItem, code_tokens: int = CODE_TOKENS) -> Attempt:
    attempt = Attempt("")
    attempt.output = ask(model, attempt, f"{requirement(item)}\n{_WRITE_CODE}", code_tokens)
    return attempt


def fewshot(model, item: TaskItem, code_tokens: int = CODE_TOKENS) -> Attempt:
    shots = "\n\n".join(_example(e, semantics=False, code=True) for e in EXAMPLES)
    attempt = Attempt("")
    attempt.output = ask(model, attempt, f"{shots}\n\n### Requirement\n{requirement(item)}\n{_WRITE_CODE}", code_tokens)
    return attempt


def cot(model, item: TaskItem, code_tokens: int = CODE_TOKENS) -> Attempt:
    attempt = Attempt("")
    task = requirement(item)
    reasoning = ask(model, attempt, f"{task}\nLet's think step by step about how to solve it. Do not write code yet.",
                    SEMANTICS_TOKENS)
    attempt.output = ask(model, attempt, f"{task}\n{reasoning.strip()}\nNow write the code. {_WRITE_CODE}", code_tokens)
    return attempt


def secot(model, item: TaskItem, code_tokens: int = CODE_TOKENS) -> Attempt:
    attempt = Attempt("")
    task = requirement(item)
    shots = "\n\n".join(_example(e, semantics=True, code=False) for e in EXAMPLES)
    written = ask(model, attempt, f"{shots}\n\nDo the same for this requirement: write only its data flow and "
                                  f"control flow, in the same format.\n### Requirement\n{task}", SEMANTICS_TOKENS)
    semantics = written.split("### Code")[0].strip()
    shots = "\n\n".join(_example(e, semantics=True, code=True) for e in EXAMPLES)
    attempt.output = ask(model, attempt, f"{shots}\n\n### Requirement\n{task}\n{semantics}\n"
                                         f"Write the code that follows this data flow and control flow. {_WRITE_CODE}",
                         code_tokens)
    return attempt


CODE_STRATEGIES = {"plain": plain, "fewshot": fewshot, "cot": cot, "secot": secot}

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)


def extract_code(output: str) -> str:
    """The code in a reply: the first fenced block that defines or imports something (else the first
    block), else the reply from its first def/import/from/class line on."""
    blocks = [b for b in _FENCE.findall(output or "") if b.strip()]
    for block in blocks:
        if re.search(r"^\s*(def|class|import|from)\s", block, re.M):
            return block.rstrip() + "\n"
    if blocks:
        return blocks[0].rstrip() + "\n"
    m = re.search(r"^(def|class|import|from)\s", output or "", re.M)
    return (output[m.start():] if m else (output or "")).rstrip() + "\n"


def program_with_tests(item: TaskItem, code: str) -> str:
    """Candidate + the benchmark's own tests, as one program (exit status 0 = pass)."""
    if item.meta.get("dataset") == "humaneval":
        entry = item.meta["entry_point"]
        # The stub (with its imports and helpers) first; a full function redefines it, a bare body completes it.
        defines = re.search(rf"^def\s+{re.escape(entry)}\s*\(", code, re.M)
        body = f"{item.prompt}\n{code}" if defines else f"{item.prompt}{code}"
        return f"{body}\n\n{item.meta['test']}\n\ncheck({entry})\n"
    imports = "\n".join(item.meta.get("test_imports", []))
    tests = "\n".join(item.meta.get("test_list", []))
    return f"{imports}\n{code}\n\n{tests}\n"
