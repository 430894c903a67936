"""GSM8K (Cobbe et al., 2021): grade-school math word problems; the RE2 paper's own suite.

The gold answer is the number after "#### " in the solution (commas dropped); items are graded as
numbers (`answer_format` "number"). Used for RE2 vs CoT (docs/reasoning.md), not a causal task.
"""

from __future__ import annotations

from clmkit.data import data_path
from clmkit.tasks.base import TaskItem, jsonl_rows

FILE = ("gsm8k", "test.jsonl")


def gold_number(solution: str) -> float:
    return float(solution.rsplit("####", 1)[1].strip().replace(",", ""))


def load(path: str | None = None) -> list[TaskItem]:
    """The 1,319 test problems (or a JSONL with the same fields at `path`)."""
    return [TaskItem(id=f"gsm8k-{i}", prompt=row["question"], answer=gold_number(row["answer"]),
                     meta={"task": "gsm8k", "answer_format": "number"})
            for i, row in jsonl_rows(path or data_path(*FILE))]
