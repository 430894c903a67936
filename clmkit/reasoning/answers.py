"""Reading an answer out of a model's free text, and grading it.

Every extractor returns None when the text does not commit to one answer; the evaluator counts
those as "unparsed" (and wrong). Formats, from `TaskItem.meta["answer_format"]`:

    yes/no   "Yes.", "no", "The answer is yes", "Answer: **No**", "\\boxed{yes}"
    choice   "B", "(B)", "Option 2", "The answer is (A)", or the text of exactly one choice;
             labels come from meta["choice_labels"] (default "A", "B", ...)
    number   "0.2390", "the answer is -0.05", '{"ANSWER": "0.12"}', "1,000" (thousands separators)
    text     the text itself (graded by ROUGE-L recall, as CaLM does)
"""

from __future__ import annotations

import re
from typing import Any

from clmkit.tasks.base import TaskItem

_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "n"}
# "the answer is", "answer:", "final answer -", "therefore, the answer (yes or no) is"
_ANSWER_CUE = re.compile(r"(?:final\s+answer|answer)(?:\s*\([^)]*\))?\s*(?:is|:|-|=)?\s*", re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _clean(text: str) -> str:
    return re.sub(r"[*_`\"'“”‘’]", "", text)


def _after_cues(text: str) -> list[str]:
    """The text right after each answer cue, last cue first; then any \\boxed{} contents."""
    tails = [text[m.end():] for m in _ANSWER_CUE.finditer(text)]
    boxed = _BOXED.findall(text)
    return list(reversed(boxed)) + list(reversed(tails))


def _first_word(text: str) -> str:
    m = re.match(r"\W*([A-Za-z]+)", text)
    return m.group(1).lower() if m else ""


def _yes_no_word(word: str) -> str | None:
    if word in _YES:
        return "yes"
    if word in _NO:
        return "no"
    return None


def extract_yes_no(text: str) -> str | None:
    text = _clean(text or "")
    for tail in _after_cues(text):
        found = _yes_no_word(_first_word(tail))
        if found:
            return found
    found = _yes_no_word(_first_word(text))
    if found:  # a leading "Yes"/"No" counts unless its own sentence also says the opposite ("yes and no")
        sentence = {w.lower() for w in re.findall(r"[A-Za-z]+", re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0])}
        opposite = _NO if found == "yes" else _YES
        return None if sentence & opposite - {"y", "n"} else found
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    present = {"yes"} & words, {"no"} & words
    if present[0] and not present[1]:
        return "yes"
    if present[1] and not present[0]:
        return "no"
    return None


def _label_pattern(labels: list[str]) -> str:
    return "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))


def extract_choice(text: str, labels: list[str], choices: list[str] | None = None) -> int | None:
    """The 0-based index of the chosen option, labelled as in the prompt (A/B/..., 1/2/..., 0/1/...)."""
    text = _clean(text or "").strip()
    alt = _label_pattern(labels)
    letters = all(label.isalpha() for label in labels)
    flags = 0 if letters else re.I
    # a label at the start, then the end, punctuation or a line break ("B", "(B) ...", "Option 2.")
    label_at = re.compile(rf"^\W*(?i:option\s*|choice\s*)?\(?({alt})(?:\)|(?=\s*$|[.:,;\n]| -))", flags)
    for tail in _after_cues(text):
        m = label_at.match(tail.strip())
        if m:
            return labels.index(m.group(1).upper() if letters else m.group(1))
    m = label_at.match(text)
    if m:
        return labels.index(m.group(1).upper() if letters else m.group(1))
    # "Option 2" / "(B)" mentioned once, nothing else
    named = {g for g in re.findall(rf"(?:\boption\s*|\()({alt})(?:\)|\b)", text, flags | re.I)}
    if letters:
        named = {g.upper() for g in named if g.upper() in labels}
    if len(named) == 1:
        return labels.index(named.pop())
    if choices:
        lowered = text.lower()
        hits = [i for i, c in enumerate(choices)
                if c.strip(" .") and re.search(rf"(?<!\w){re.escape(c.strip(' .').lower())}(?!\w)", lowered)]
        if len(hits) == 1:
            return hits[0]
    return None


# A number, with thousands separators read as one number ("1,000" -> 1000, "$12,345.50" -> 12345.5):
# 1-3 digits then groups of exactly three after each comma, not glued to more digits or commas
# ("1,0000" and "1,000,00" are not thousands-grouped). A comma followed by a space or by fewer or
# more than three digits separates numbers, so lists stay lists: "1, 2" and "1,2,3" are 1, 2 (and 3).
_NUMBER = re.compile(r"[-+]?(?:(?<![\d,])\d{1,3}(?:,\d{3})+(?!,?\d)(?:\.\d*)?|\d+\.\d*|\.\d+|\d+)"
                     r"(?:[eE][-+]?\d+)?")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def extract_number(text: str) -> float | None:
    text = _clean(text or "")
    m = re.search(r"ANSWER\s*:?\s*\{?\s*:?\s*\"?\s*([-+]?[\d.,]+)", text, re.I)
    for tail in ([m.group(1)] if m else []) + _after_cues(text):
        n = _NUMBER.search(tail)
        if n:
            return _number(n.group())
    numbers = _NUMBER.findall(text)
    return _number(numbers[-1]) if numbers else None


def extract(item: TaskItem, text: str) -> Any:
    """The answer `text` commits to, in the item's format; None when there is none."""
    fmt = item.meta.get("answer_format", "yes/no")
    if fmt == "yes/no":
        return extract_yes_no(text)
    if fmt == "choice":
        n = len(item.choices or [])
        labels = item.meta.get("choice_labels") or [chr(ord("A") + i) for i in range(n)]
        return extract_choice(text, list(labels), item.choices)
    if fmt == "number":
        return extract_number(text)
    if fmt == "text":
        stripped = (text or "").strip()
        return stripped or None
    raise ValueError(f"unknown answer format {fmt!r}")


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall on lower-cased word tokens: LCS length / reference length."""
    p, r = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
    if not p or not r:
        return 0.0
    prev = [0] * (len(p) + 1)
    for a in r:
        cur = [0]
        for j, b in enumerate(p, 1):
            cur.append(prev[j - 1] + 1 if a == b else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1] / len(r)


def grade(item: TaskItem, prediction: Any) -> float:
    """1.0 / 0.0 for right / wrong (None is wrong); ROUGE-L recall for free text."""
    if prediction is None or item.answer is None:
        return 0.0
    fmt = item.meta.get("answer_format", "yes/no")
    if fmt == "number":
        return float(round(float(prediction), 4) == round(float(item.answer), 4))
    if fmt == "text":
        return rouge_l_recall(str(prediction), str(item.answer))
    if fmt == "yes/no":
        return float(str(prediction).lower() == str(item.answer).lower())
    return float(prediction == item.answer)
