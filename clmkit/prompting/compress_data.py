"""The prompts the compressor is trained and measured on, split so training never sees a test item.

    gsm8k: test.jsonl rows 0..999 are for evaluation, rows 1000.. are the "training split" (the
           shared data holds only GSM8K's test file); the answer is the gold solution.
    summarization: Spec-Bench's 80 "Summarize:" articles (CNN/DailyMail); the first 40 evaluate,
           the last 40 train; the answer is the reference summary (its "reference" field).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from clmkit.data import data_path
from clmkit.errors import InputError

GSM8K_EVAL_ROWS = 1000
SUMMARY_EVAL_ROWS = 40
GSM8K_CUE = "\nLet's think step by step, and end with \"The answer is N.\""
SUMMARY_PREFIX = "Summarize: "


@dataclass
class CompressionItem:
    id: str
    before: str  # instruction text before the part that is compressed
    text: str  # the part that is compressed (question / article)
    after: str  # instruction text after it
    answer: str  # gsm8k: the gold solution; summarization: the reference summary
    gold_number: float | None = None

    def prompt(self, text: str | None = None) -> str:
        return f"{self.before}{self.text if text is None else text}{self.after}"


def _gold_solution(answer: str) -> tuple[str, float]:
    reasoning, _, final = answer.partition("####")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip()  # calculator annotations
    number = float(final.strip().replace(",", ""))
    return f"{reasoning}\nThe answer is {final.strip()}.", number


def gsm8k(split: str) -> list[CompressionItem]:
    rows = [json.loads(l) for l in data_path("gsm8k", "test.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    rows = rows[:GSM8K_EVAL_ROWS] if split == "eval" else rows[GSM8K_EVAL_ROWS:]
    items = []
    for i, row in enumerate(rows, start=0 if split == "eval" else GSM8K_EVAL_ROWS):
        solution, number = _gold_solution(row["answer"])
        items.append(CompressionItem(f"gsm8k-{i}", "", row["question"], GSM8K_CUE, solution, number))
    return items


def summarization(split: str) -> list[CompressionItem]:
    rows = [json.loads(l) for l in data_path("spec_bench", "question.jsonl").read_text(encoding="utf-8").splitlines()
            if l.strip()]
    rows = [r for r in rows if r["category"] == "summarization"]
    rows = rows[:SUMMARY_EVAL_ROWS] if split == "eval" else rows[SUMMARY_EVAL_ROWS:]
    items = []
    for r in rows:
        text = r["turns"][0]
        if text.startswith(SUMMARY_PREFIX):
            text = text[len(SUMMARY_PREFIX):]
        reference = r.get("reference") or [""]
        reference = reference[0] if isinstance(reference[0], str) else " ".join(reference[0])
        items.append(CompressionItem(f"specbench-{r['question_id']}", SUMMARY_PREFIX, text, "", reference.strip()))
    return items


SOURCES = {"gsm8k": gsm8k, "summarization": summarization}


def load_items(source: str, split: str) -> list[CompressionItem]:
    if source not in SOURCES:
        raise InputError(f"unknown compression data {source!r}; choose from {', '.join(SOURCES)}")
    if split not in ("train", "eval"):
        raise InputError(f"split must be train or eval, got {split!r}")
    return SOURCES[source](split)


def last_number(text: str) -> float | None:
    """GSM8K's answer: the number after "The answer is", else the last number in the text."""
    text = text.replace(",", "")
    m = re.findall(r"answer is\s*\$?\s*(-?\d+(?:\.\d+)?)", text, re.I) or re.findall(r"-?\d+(?:\.\d+)?", text)
    return float(m[-1]) if m else None
