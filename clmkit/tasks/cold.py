"""COLD (Joshi et al., NeurIPS 2024): causal query triplets over five daily activities.

Each row is a premise event, two candidate events and whether the *cause* or the *effect* of the
premise is asked; `label` is the index of the correct candidate. The "hard" sets (1,000 rows per
activity, "causally hard" negatives) are what the paper's prompt-based evaluation uses; the full
sampled sets have ~10,000 rows per activity. The prompt is the paper's first MCQA template.
"""

from __future__ import annotations

import csv

from clmkit.data import data_path
from clmkit.tasks.base import TaskItem

ACTIVITIES = ("baking_a_cake", "going_grocery_shopping", "going_on_a_train", "planting_a_tree", "riding_on_a_bus")
FOLDERS = {"hard": "causal_query_triplets_sampled_instances_hard", "full": "causal_query_triplets_sampled_instances"}


def format_prompt(activity: str, premise: str, choices: list[str], question: str) -> str:
    options = "\n".join(f"{letter}. {c}" for letter, c in zip("AB", choices))
    return (f"Consider the activity of '{activity}'. Which of the following events (given as options A or B) "
            f"is a more plausible {question} of the event '{premise}'?\n{options}\nAnswer:")


def load(split: str = "hard", activities: tuple[str, ...] | list[str] = ACTIVITIES) -> list[TaskItem]:
    if split not in FOLDERS:
        raise ValueError(f"unknown COLD split {split!r}; choose from {', '.join(FOLDERS)}")
    items = []
    for activity in activities:
        if activity not in ACTIVITIES:
            raise ValueError(f"unknown COLD activity {activity!r}; choose from {', '.join(ACTIVITIES)}")
        with open(data_path("cold", FOLDERS[split], f"{activity}.csv"), newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                choices = [row["choice1"], row["choice2"]]
                items.append(TaskItem(
                    id=f"cold-{split}-{activity}-{i}",
                    prompt=format_prompt(activity.replace("_", " "), row["premise"], choices, row["question"]),
                    answer=int(row["label"]),
                    choices=choices,
                    meta={"task": f"cold-{split}", "activity": activity, "type": row["question"],
                          "answer_format": "choice", "choice_labels": ["A", "B"]},
                ))
    return items


def load_full() -> list[TaskItem]:
    return load("full")
