"""Code-generation benchmarks with executable tests: HumanEval (Chen et al. 2021) and MBPP (Austin et
al. 2021, the sanitized 427-task version; its test split is task_ids 11-510).

Each item's meta carries what `clmkit.prompting.secot.program_with_tests` needs to build the program the
sandbox runs: HumanEval's `test` + `entry_point`, MBPP's `test_imports` + `test_list`.
"""

from __future__ import annotations

import gzip
import json

from clmkit.data import data_path
from clmkit.errors import InputError
from clmkit.tasks.base import TaskItem

DATASETS = ("humaneval", "mbpp")


def load_humaneval() -> list[TaskItem]:
    with gzip.open(data_path("humaneval", "HumanEval.jsonl.gz"), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [TaskItem(r["task_id"], r["prompt"], None, meta={
        "task": "humaneval", "dataset": "humaneval", "entry_point": r["entry_point"], "test": r["test"],
        "answer_format": "code"}) for r in rows]


def load_mbpp() -> list[TaskItem]:
    rows = json.loads(data_path("mbpp", "sanitized-mbpp.json").read_text(encoding="utf-8"))
    return [TaskItem(f"mbpp-{r['task_id']}", r["prompt"], None, meta={
        "task": "mbpp", "dataset": "mbpp", "test_imports": r.get("test_imports") or [], "test_list": r["test_list"],
        "answer_format": "code"}) for r in rows if 11 <= int(r["task_id"]) <= 510]


def load_code(name: str) -> list[TaskItem]:
    if name == "humaneval":
        return load_humaneval()
    if name == "mbpp":
        return load_mbpp()
    raise InputError(f"unknown code dataset {name!r}; choose from {', '.join(DATASETS)}")
