"""Transitivity questions from *Teaching Transformers Causal Reasoning through Axiomatic Training*
(Vashishtha et al. 2024), in the paper's evaluation settings.

An item states a causal graph edge by edge ("A causes B. B causes C.") and asks "Does X cause Y?";
the answer is yes exactly when there is a directed path from X to Y (the transitivity axiom).
Node names are random alphanumeric strings of 1–3 characters, as in the paper's data.

Settings (the paper's generalisation tests; training used chains of 3–6 nodes):
  chain      sequential chains X1 -> X2 -> ... -> Xn, statements in order     (n = 3..6)
  long_chain the same, longer than any training chain                         (n = 7..15)
  flipped    long chains whose edges point either way at random ("random flipping") (n = 7..15)
  reversed   sequential chains with the statements listed last edge first     (n = 3..6)
  branching  random DAGs with on average `bf` edges per node, bf in {1.4, 2}  (n = 5..12)
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterable, Sequence
from itertools import permutations

import networkx as nx

from clmkit.tasks.base import TaskItem, jsonl_rows

SETTINGS = ("chain", "long_chain", "flipped", "reversed", "branching")
_ALPHABET = string.ascii_letters + string.digits


def node_names(k: int, rng: random.Random, length: tuple[int, int] = (1, 3), pool: Sequence[str] | None = None) -> list[str]:
    """k distinct random alphanumeric names of `length` characters, or k distinct names drawn from `pool`."""
    if pool is not None:
        distinct = sorted(set(pool))
        if len(distinct) < k:
            raise ValueError(f"a pool of {len(distinct)} distinct names cannot name {k} nodes")
        return rng.sample(distinct, k)
    names: list[str] = []
    while len(names) < k:
        name = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(*length)))
        if name not in names:
            names.append(name)
    return names


def chain_edges(names: list[str], rng: random.Random, flip: bool) -> list[tuple[str, str]]:
    edges = list(zip(names, names[1:]))
    return [(b, a) if flip and rng.random() < 0.5 else (a, b) for a, b in edges]


def branching_edges(names: list[str], rng: random.Random, branching_factor: float) -> list[tuple[str, str]]:
    """A connected DAG with round(bf * n) edges pointing forward in `names`' order, listed grouped
    by cause with the causes in random order (as the paper's branching files are)."""
    n = len(names)
    edges = {(names[rng.randrange(i)], names[i]) for i in range(1, n)}   # a random spanning tree
    target = min(round(branching_factor * n), n * (n - 1) // 2)
    while len(edges) < target:
        i, j = sorted(rng.sample(range(n), 2))
        edges.add((names[i], names[j]))
    causes = sorted({a for a, _ in edges}, key=names.index)
    rng.shuffle(causes)
    return [(a, b) for a in causes for b in names if (a, b) in edges]


def premise_text(edges: Iterable[tuple[str, str]]) -> str:
    return " ".join(f"{a} causes {b}." for a, b in edges)


def question_text(x: str, y: str) -> str:
    return f"Does {x} cause {y}?"


def generate(n: int, seed: int = 0, settings: tuple[str, ...] = SETTINGS, name_pool: Sequence[str] | None = None) -> list[TaskItem]:
    """n items cycling through `settings`, reproducible by seed; answers alternate yes/no per setting.
    `name_pool`: draw node names from this pool (the lab uses names that are one token each) instead of
    random 1-3 character strings."""
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown axiomatic setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    rng = random.Random(seed)
    items = []
    for k in range(n):
        setting = settings[k % len(settings)]
        want = (k // len(settings)) % 2 == 0
        size = {"chain": (3, 6), "reversed": (3, 6), "long_chain": (7, 15), "flipped": (7, 15), "branching": (5, 12)}[setting]
        while True:
            names = node_names(rng.randint(*size), rng, pool=name_pool)
            if setting == "branching":
                bf = rng.choice((1.4, 2.0))
                edges = branching_edges(names, rng, bf)
            else:
                edges = chain_edges(names, rng, flip=setting == "flipped")
            g = nx.DiGraph(edges)
            pairs = [(x, y) for x, y in permutations(names, 2) if nx.has_path(g, x, y) == want]
            if pairs:
                break
        x, y = rng.choice(pairs)
        shown = list(reversed(edges)) if setting == "reversed" else edges
        premise, question = premise_text(shown), question_text(x, y)
        meta = {"setting": setting, "num_nodes": len(names), "premise": premise, "question": question, "index": k}
        if setting == "branching":
            meta["branching_factor"] = bf
        items.append(TaskItem(id=f"axiomatic-gen-{seed}-{k}", prompt=f"{premise} {question}",
                              answer="yes" if want else "no", meta=meta))
    return items


def row_from_item(item: TaskItem) -> dict:
    return {"prompt": item.prompt, "answer": item.answer, **{k: v for k, v in item.meta.items() if k != "index"}}


def write_jsonl(items: Iterable[TaskItem], f) -> None:
    for item in items:
        f.write(json.dumps(row_from_item(item)) + "\n")


def load(path: str, limit: int | None = None) -> list[TaskItem]:
    """Rows written by `write_jsonl` (or any JSONL with prompt/answer)."""
    items = []
    for i, row in jsonl_rows(path, limit):
        meta = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
        items.append(TaskItem(id=f"axiomatic-{i}", prompt=row["prompt"], answer=row.get("answer"), meta={**meta, "index": i}))
    return items
