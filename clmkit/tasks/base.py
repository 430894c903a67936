"""The one item type every benchmark loader and generator produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskItem:
    id: str
    prompt: str                      # the question text as the benchmark states it
    answer: str | int | None         # gold: "yes"/"no", a choice index, ...; None when unlabelled
    choices: list[str] | None = None  # for multiple-choice tasks
    meta: dict[str, Any] = field(default_factory=dict)  # breakdown keys: template, type, rung, query_type, ...
