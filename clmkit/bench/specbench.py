"""Spec-Bench prompts (Xia et al., 2024): 13 categories, first turn, a fixed sample per category."""

from __future__ import annotations

import json
from dataclasses import dataclass

from clmkit.data import data_path
from clmkit.errors import InputError

SPECBENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities",
                        "translation", "summarization", "qa", "math_reasoning", "rag")


@dataclass
class SpecBenchPrompt:
    question_id: int
    category: str
    text: str


def load_specbench(per_category: int | None = 2, categories: list[str] | None = None) -> list[SpecBenchPrompt]:
    """The first `per_category` questions of each category in file order (deterministic), first turn."""
    unknown = sorted(set(categories or ()) - set(SPECBENCH_CATEGORIES))
    if unknown:
        raise InputError(f"unknown Spec-Bench categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                         f"known: {', '.join(SPECBENCH_CATEGORIES)}")
    rows = [json.loads(line) for line in data_path("spec_bench", "question.jsonl").read_text().splitlines() if line.strip()]
    taken: dict[str, int] = {}
    out = []
    for row in rows:
        cat = row["category"]
        if categories and cat not in categories:
            continue
        if per_category is not None and taken.get(cat, 0) >= per_category:
            continue
        taken[cat] = taken.get(cat, 0) + 1
        out.append(SpecBenchPrompt(int(row["question_id"]), cat, row["turns"][0]))
    return out
