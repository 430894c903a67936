"""JRT-Prompt (Arora et al. 2024, "Just read twice: closing the recall gap for recurrent language
models"): show the whole input (context and question) twice before the model answers.

A model that reads left to right decides what to keep from the context before it has seen the
question; the second copy is read knowing the question. The cost is a prefill about twice as long,
no extra decoding. The paper targets recurrent LMs; on a Transformer the second copy can also
attend back to the first, so the measured effect here says what it does for a causal Transformer.

    jrt_prompt("k1: 3\\nk2: 7", "What is the value of k2?")   # context, question, context, question
    recall_items(100, pairs=32, seed=0)                        # generated key-value recall task
    STRATEGIES["jrt"](model, item)                             # any benchmark item, read twice
"""

from __future__ import annotations

import random
import re
import string

from clmkit.errors import InputError
from clmkit.tasks.base import TaskItem

ANSWER_TOKENS = 24


def jrt_prompt(context: str, question: str, repeats: int = 2) -> str:
    """The input (context, then question) `repeats` times, then the answer cue. repeats=1 is plain."""
    if repeats < 1:
        raise InputError(f"JRT repeats must be >= 1, got {repeats}")
    if not context.strip() or not question.strip():
        raise InputError("JRT needs a non-empty context and question")
    once = f"{context.strip()}\n\n{question.strip()}"
    return "\n\n".join([once] * repeats) + "\nAnswer:"


def recall_items(n: int, pairs: int = 32, seed: int = 0) -> list[TaskItem]:
    """Multi-query associative recall in text: `pairs` "key: value" lines (4-letter keys, 4-digit
    values, all distinct), one key asked; the exact value is the answer."""
    if n < 1 or pairs < 1:
        raise InputError(f"the recall task needs n >= 1 and pairs >= 1, got n={n}, pairs={pairs}")
    rng = random.Random(seed)
    items = []
    for i in range(n):
        keys = set()
        while len(keys) < pairs:
            keys.add("".join(rng.choice(string.ascii_lowercase) for _ in range(4)))
        keys = sorted(keys, key=lambda _: rng.random())
        values = rng.sample(range(1000, 10000), pairs)
        asked = rng.randrange(pairs)
        context = "Here is a list of keys and their values.\n" + "\n".join(f"{k}: {v}" for k, v in zip(keys, values))
        question = f"What is the value of the key '{keys[asked]}'? Answer with the 4-digit value only."
        items.append(TaskItem(f"recall-{seed}-{pairs}-{i}", question, str(values[asked]),
                              meta={"task": "kv-recall", "context": context, "question": question,
                                    "pairs": pairs, "position": asked, "answer_format": "exact"}))
    return items


def recall_correct(output: str, answer: str) -> bool:
    """Exact: the first 4-digit number in the output is the value."""
    m = re.search(r"\d{4}", output or "")
    return bool(m) and m.group() == answer


def jrt(model, item: TaskItem):
    """Strategy `jrt` for any benchmark item: the question (and the answer format) read twice, then
    a direct answer. Items with a separate context (meta["context"]) repeat context + question."""
    from clmkit.reasoning.strategies import Attempt, answer_hint, ask, question_text

    context = item.meta.get("context")
    question = item.meta.get("question", question_text(item)) if context else question_text(item)
    hint = answer_hint(item) if item.meta.get("answer_format") in ("yes/no", "choice", "number") else ""
    question = f"{question}\n{hint}".strip()
    prompt = jrt_prompt(context, question) if context else "\n\n".join([question] * 2) + "\nAnswer:"
    attempt = Attempt("")
    attempt.output = ask(model, attempt, prompt, ANSWER_TOKENS, stop=["\n\n"])
    return attempt
