"""CLadder (Jin et al., NeurIPS 2023): yes/no causal questions over the three rungs of Pearl's ladder.

The public file is the v1.5 subset with ids divisible by 8 (895 rows); `prompt` already joins the
background, the given information and the question.
"""

from __future__ import annotations

import csv

from clmkit.data import data_path
from clmkit.tasks.base import TaskItem

FILE = ("cladder", "cladder_public.csv")


def load(path: str | None = None) -> list[TaskItem]:
    """All rows of the public CLadder file (or a CSV with the same columns at `path`)."""
    source = path or data_path(*FILE)
    items = []
    with open(source, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            items.append(TaskItem(
                id=f"cladder-{row['id']}",
                prompt=row["prompt"],
                answer=row["label"].strip().lower() or None,
                choices=["yes", "no"],
                meta={
                    "task": "cladder",
                    "rung": int(row["rung"]),
                    "query_type": row["query_type"],
                    "graph": row["graph_id"],
                    "story": row["story_id"],
                    "type": row["question_property"],  # nonsense / anticommonsense / commonsense / easy / hard
                    "formal_form": row["formal_form"],
                    "answer_format": "yes/no",
                },
            ))
    return items
