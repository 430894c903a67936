"""The one item type every benchmark loader and generator produces, and the JSONL reader they share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskItem:
    id: str
    prompt: str                      # the question text as the benchmark states it
    answer: str | int | None         # gold: "yes"/"no", a choice index, ...; None when unlabelled
    choices: list[str] | None = None  # for multiple-choice tasks
    meta: dict[str, Any] = field(default_factory=dict)  # breakdown keys: template, type, rung, query_type, ...


def jsonl_rows(path, limit: int | None = None) -> Iterator[tuple[int, dict]]:
    """(line index, parsed row) for each non-blank line of a JSONL file, at most `limit` rows."""
    taken = 0
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and taken >= limit:
                return
            if line.strip():
                taken += 1
                yield i, json.loads(line)
