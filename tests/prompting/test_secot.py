"""SeCoT and the code baselines with a scripted model; code extraction; the test programs."""

from __future__ import annotations

import gzip
import json

import pytest

from clmkit.prompting.sandbox import run_program
from clmkit.prompting.secot import CODE_STRATEGIES, extract_code, program_with_tests
from clmkit.reasoning.lm import FakeModel
from clmkit.tasks.base import TaskItem

STUB = 'def add(a, b):\n    """Return a + b."""\n'
HUMANEVAL = TaskItem("HumanEval/x", STUB, None, meta={
    "dataset": "humaneval", "entry_point": "add", "test": "def check(f):\n    assert f(2, 3) == 5\n"})
MBPP = TaskItem("mbpp-x", "Write a function to add two numbers.", None, meta={
    "dataset": "mbpp", "test_imports": [], "test_list": ["assert add(2, 3) == 5"]})
FULL = "```python\ndef add(a, b):\n    return a + b\n```"


def test_secot_writes_semantics_then_code_from_them():
    model = FakeModel(["### Data flow\na and b flow into the sum.\n### Control flow\nNo branches.\n### Code\nx", FULL])
    attempt = CODE_STRATEGIES["secot"](model, MBPP)
    first, second = model.calls
    assert "### Data flow" in first and "### Control flow" in first and "write only its data flow" in first
    assert "a and b flow into the sum." in second and "### Code\nx" not in second  # semantics, not a code draft
    assert second.count("### Code") == 2  # the two worked examples
    assert run_program(program_with_tests(MBPP, extract_code(attempt.output))).passed


def test_baselines_call_counts():
    for name, calls in (("plain", 1), ("fewshot", 1), ("cot", 2), ("secot", 2)):
        model = FakeModel(["step one", FULL])
        CODE_STRATEGIES[name](model, HUMANEVAL)
        assert len(model.calls) == calls, name
    model = FakeModel(["reasoning here", FULL])
    CODE_STRATEGIES["cot"](model, HUMANEVAL)
    assert "Let's think step by step" in model.calls[0] and "reasoning here" in model.calls[1]


def test_extract_code():
    assert extract_code(FULL) == "def add(a, b):\n    return a + b\n"
    assert extract_code("Sure!\n```\nprint(1)\n```\n```python\nimport os\n```") == "import os\n"
    assert extract_code("Here:\ndef f():\n    return 1") == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1\n"  # unclosed fence


def test_programs_pass_and_fail_for_the_right_reason():
    assert run_program(program_with_tests(HUMANEVAL, extract_code(FULL))).passed
    assert run_program(program_with_tests(HUMANEVAL, "    return a + b\n")).passed  # a body completes the stub
    assert not run_program(program_with_tests(HUMANEVAL, "    return a - b\n")).passed
    assert not run_program(program_with_tests(MBPP, "def add(a, b):\n    return 0\n")).passed


def test_real_canonical_solutions_pass():
    from clmkit.data import data_dir
    from clmkit.tasks.code import load_humaneval, load_mbpp

    try:
        data_dir()
        humaneval, mbpp = load_humaneval(), load_mbpp()
    except FileNotFoundError:
        pytest.skip("HumanEval/MBPP data not found (set CLMKIT_DATA)")
    with gzip.open(data_dir() / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        solutions = {r["task_id"]: r["canonical_solution"] for r in map(json.loads, f)}
    for item in humaneval[:3]:
        assert run_program(program_with_tests(item, solutions[item.id])).passed
        assert not run_program(program_with_tests(item, "    return None\n")).passed
    rows = {f"mbpp-{r['task_id']}": r["code"] for r in json.loads((data_dir() / "mbpp" / "sanitized-mbpp.json").read_text())}
    assert len(mbpp) == 257
    for item in mbpp[:3]:
        assert run_program(program_with_tests(item, rows[item.id])).passed
