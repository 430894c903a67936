"""CounterBench (Chen et al. 2025): deterministic counterfactual questions over nonsense variables.

Each row gives boolean causal rules ("A causes B", "A and B together cause not C", ...), sometimes
an observation ("We observed X"), and asks whether an outcome would occur under a supposition:
basic ("if not A instead of A"), conditional (the same, plus an observation), joint ("if not A and
not B"), nested ("Assume not A, ... further suppose not B").

`load()` reads the real file; `generate()` makes new rows in the same style with fresh nonsense
names, labelled by the exact engine (`clmkit.causal.counterfactual`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from clmkit.causal.counterfactual import SCM, Literal, Mechanism, counterfactual
from clmkit.data import data_path
from clmkit.tasks.base import TaskItem, jsonl_rows

TYPES = ("basic", "conditional", "joint", "nested")


def load(path: str | Path | None = None, limit: int | None = None) -> list[TaskItem]:
    """The CounterBench JSONL (default: $CLMKIT_DATA/counterbench/counterbench_public.jsonl)."""
    path = Path(path) if path else data_path("counterbench", "counterbench_public.jsonl")
    return [item_from_row(row, i) for i, row in jsonl_rows(path, limit)]


def item_from_row(row: dict, index: int) -> TaskItem:
    meta = row.get("meta") or {}
    return TaskItem(
        id=f"counterbench-{row.get('question_id', index)}",
        prompt=f"{row['given_info'].strip()} {row['question'].strip()}",
        answer=row.get("answer"),
        meta={"type": row.get("type"), "graph_id": meta.get("graph_id"), "story_id": meta.get("story_id"),
              "question": row["question"], "given_info": row["given_info"], "index": index},
    )


def row_from_item(item: TaskItem) -> dict:
    """The JSONL row of an item (the real file's fields)."""
    m = item.meta
    return {"question": m["question"], "given_info": m["given_info"], "answer": item.answer, "type": m["type"],
            "question_id": m["index"],
            "meta": {"story_id": m["story_id"], "rung": 3, "query_type": "det-counterfactual",
                     "model_id": m["index"], "graph_id": m["graph_id"]}}


def write_jsonl(items: Iterable[TaskItem], f) -> None:
    for item in items:
        f.write(json.dumps(row_from_item(item)) + "\n")


# ---- nonsense names ---------------------------------------------------------------------------

_ONSETS = ["b", "bl", "br", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "j", "k", "kl", "kr", "m", "n", "p",
           "pl", "pr", "qu", "r", "sk", "skr", "sl", "sn", "sp", "spl", "st", "t", "tr", "v", "vr", "w", "y", "z", "zl"]
_VOWELS = ["a", "e", "i", "o", "u", "oo", "ee", "y"]
_CODAS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "rb", "rf", "rk", "rn", "sk", "x", "z", ""]
# One-syllable names end in a cluster English words rarely do, so "Drug" or "Trim" cannot come out.
_RARE_CODAS = ["rf", "rb", "zz", "nx", "lv", "rv"]
_REAL_WORDS = {"Turf", "Surf", "Serf", "Verb", "Kerb", "Buzz", "Fizz", "Jazz", "Fuzz", "Lynx", "Jinx", "Minx"}


def nonsense_name(rng: random.Random) -> str:
    if rng.random() < 0.4:
        word = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_RARE_CODAS)
    else:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2)) + rng.choice(_CODAS)
    return word.capitalize()


def nonsense_names(k: int, rng: random.Random) -> list[str]:
    names: list[str] = []
    while len(names) < k:
        name = nonsense_name(rng)
        if 4 <= len(name) <= 8 and name not in names and name not in _REAL_WORDS:
            names.append(name)
    return names


# ---- rendering the rules ----------------------------------------------------------------------

def _cause_text(m: Mechanism) -> str:
    if len(m.inputs) == 1:
        return str(m.inputs[0])
    joined = f" {m.gate} ".join(map(str, m.inputs))
    return joined + (" together" if m.gate == "and" else "")


def _effect_list(effects: list[str]) -> str:
    return effects[0] if len(effects) == 1 else ", ".join(effects[:-1]) + " and " + effects[-1]


def rules_text(mechanisms: list[Mechanism]) -> str:
    """'A causes B and C, B and C together cause not D, and D causes E' (in the given order).

    Mechanisms with the same cause expression that follow each other share one clause.
    """
    clauses: list[tuple[Mechanism, list[str]]] = []
    for m in mechanisms:
        effect = f"not {m.target}" if m.negated else m.target
        if clauses and clauses[-1][0].inputs == m.inputs and clauses[-1][0].gate == m.gate:
            clauses[-1][1].append(effect)
        else:
            clauses.append((m, [effect]))
    texts = []
    for m, effects in clauses:
        plural = len(m.inputs) > 1 and m.gate == "and"   # "A and B together cause", "A or B causes"
        texts.append(f"{_cause_text(m)} {'cause' if plural else 'causes'} {_effect_list(effects)}")
    if len(texts) == 1:
        return texts[0]
    return ", ".join(texts[:-1]) + ", and " + texts[-1]


def question_text(kind: str, treatment: str, outcome: str, second: str | None = None) -> str:
    if kind in ("basic", "conditional"):
        return f"Would {outcome} occur if not {treatment} instead of {treatment}?"
    if kind == "joint":
        return f"Would {outcome} occur if not {treatment} and not {second}?"
    return f"Assume not {treatment}, and based on this assumption, further suppose not {second}. Would {outcome} occur?"


# ---- generation -------------------------------------------------------------------------------

def random_mechanisms(names: list[str], rng: random.Random, extra_root: str | None = None) -> list[Mechanism]:
    """Rules over names[0] (the treatment, a root) ... names[-1] (the outcome).

    Every variable after the first depends on its predecessor (so the treatment reaches the
    outcome) and sometimes on one more earlier variable through an and/or gate; `extra_root`,
    when given, is a second root cause feeding one of the gates.
    """
    mechanisms = []
    host = rng.randrange(1, len(names)) if extra_root else -1
    for i in range(1, len(names)):
        inputs = [names[i - 1]]
        if i == host:
            inputs.append(extra_root)
        elif i >= 2 and rng.random() < 0.35:
            inputs.append(rng.choice(names[: i - 1]))
        if len(inputs) == 1:
            mechanisms.append(Mechanism(names[i], (Literal(inputs[0], rng.random() < 0.15),), negated=rng.random() < 0.2))
        else:
            literals = tuple(Literal(v, rng.random() < 0.15) for v in inputs)
            mechanisms.append(Mechanism(names[i], literals, gate=rng.choice(("and", "or")), negated=rng.random() < 0.15))
    return mechanisms


def generate(n: int, seed: int = 0, sizes: tuple[int, ...] = (5, 6, 7, 8, 9), max_tries: int = 100) -> list[TaskItem]:
    """n new rows, reproducible by seed: the four types in turn, answers alternating yes/no.

    Conditional rows observe a root cause only, where every reading of "We observed" agrees.
    """
    rng = random.Random(seed)
    items = []
    for k in range(n):
        kind = TYPES[k % len(TYPES)]
        size = sizes[(k // len(TYPES)) % len(sizes)]
        want = (k + k // len(TYPES)) % 2 == 0   # alternate yes/no within each type
        for _ in range(max_tries):
            names = nonsense_names(size, rng)
            extra = names.pop(rng.randrange(1, size - 1)) if kind == "conditional" else None
            mechanisms = random_mechanisms(names, rng, extra)
            scm = SCM(mechanisms)
            treatment, outcome = names[0], names[-1]
            second = rng.choice(names[1:-1]) if kind in ("joint", "nested") else None
            evidence, interventions = {}, {treatment: False}
            if kind in ("basic", "conditional"):
                evidence[treatment] = True
            if extra:
                interventions[extra] = evidence[extra] = rng.random() < 0.5
            if second:
                interventions[second] = False
            answer = counterfactual(scm, evidence, interventions, outcome)
            if answer is want:
                break
        given = f"We know that {rules_text(mechanisms)}."
        if extra:
            given += f" We observed {extra if evidence[extra] else 'not ' + extra}."
        question = question_text(kind, treatment, outcome, second)
        items.append(TaskItem(
            id=f"counterbench-gen-{seed}-{k}",
            prompt=f"{given} {question}",
            answer="yes" if answer else "no",
            meta={"type": kind, "graph_id": f"graph{size}", "story_id": f"nonsense_gen_{seed}",
                  "question": question, "given_info": given, "index": k},
        ))
    return items
