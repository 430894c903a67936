"""CausalNet (the CARE-CA paper, Ashwani et al. 2024): a context and three candidate causes.

`label` is the index of the correct choice (0, 1 or 2).
"""

from __future__ import annotations

import json

from clmkit.data import data_path
from clmkit.tasks.base import TaskItem

FILE = ("causalnet", "causalnet.json")


def format_prompt(context: str, ask_for: str, choices: list[str]) -> str:
    options = "\n".join(f"{i}. {c}" for i, c in enumerate(choices))
    return (f"Context: {context}\nQuestion: which of the following is the most plausible {ask_for}?\n"
            f"{options}\nAnswer with the number of one option (0, 1 or 2).")


def load(path: str | None = None) -> list[TaskItem]:
    with open(path or data_path(*FILE), encoding="utf-8") as f:
        rows = json.load(f)
    items = []
    for row in rows:
        choices = [row[f"choice_id: {i}"] for i in range(3)]
        items.append(TaskItem(
            id=f"causalnet-{row['index']}",
            prompt=format_prompt(row["context"], row["ask-for"], choices),
            answer=int(row["label"]),
            choices=choices,
            meta={"task": "causalnet", "type": row["ask-for"], "answer_format": "choice",
                  "choice_labels": ["0", "1", "2"]},
        ))
    return items
