"""Corr2Cause (Jin et al., *Can Large Language Models Infer Causation from Correlation?*, ICLR 2024).

Each item: a premise listing every correlation and (conditional) independence among N variables,
and a hypothesis about one causal relation between two of them; label 1 when the relation holds
in every DAG of the Markov equivalence class the premise determines.

`load()` reads the real test file; `generate()` makes new items in exactly the same text format,
labelled by the exact engine (`clmkit.causal`).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import networkx as nx

from clmkit.causal.dsep import Independence, implied_independencies, marginally_dependent_pairs
from clmkit.causal.equivalence import consistent_dags, cpdag_from_dag
from clmkit.causal.relations import holds_in_every
from clmkit.data import data_path
from clmkit.tasks.base import TaskItem

TEMPLATES = ("parent", "child", "non-parent ancestor", "non-child descendant", "has_collider", "has_confounder")
CSV_FIELDS = ("input", "label", "num_variables", "template")


def load(path: str | Path | None = None, limit: int | None = None) -> list[TaskItem]:
    """The Corr2Cause CSV (default: $CLMKIT_DATA/corr2cause/test_public.csv) as TaskItems."""
    path = Path(path) if path else data_path("corr2cause", "test_public.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [item_from_row(row, i) for i, row in enumerate(rows[:limit] if limit else rows)]


def item_from_row(row: dict, index: int) -> TaskItem:
    label = row.get("label")
    answer = None if label in (None, "") else ("yes" if int(label) == 1 else "no")
    return TaskItem(
        id=f"corr2cause-{index}",
        prompt=row["input"],
        answer=answer,
        meta={"template": row.get("template"), "num_variables": int(row["num_variables"]) if row.get("num_variables") else None,
              "index": index},
    )


def row_from_item(item: TaskItem) -> dict:
    """The CSV row of an item (the real file's columns)."""
    label = "" if item.answer is None else int(item.answer == "yes")
    return {"input": item.prompt, "label": label, "num_variables": item.meta["num_variables"], "template": item.meta["template"]}


def write_csv(items: Iterable[TaskItem], f) -> None:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)  # \r\n row ends, quoting as the real file
    writer.writeheader()
    for item in items:
        writer.writerow(row_from_item(item))


# ---- text ------------------------------------------------------------------------------------

def variable_names(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def list_text(names: list[str] | tuple[str, ...]) -> str:
    """['A'] -> 'A'; ['A', 'B', 'C'] -> 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def premise_text(variables: list[str], independencies: Iterable[Independence]) -> str:
    """The premise exactly as the Corr2Cause generator words it: correlations, then every independence."""
    independencies = sorted(independencies, key=lambda s: (s.x, s.y, s.given))
    correlations = [f"{x} correlates with {y}." for x, y in sorted(marginally_dependent_pairs(variables, frozenset(independencies)))]
    statements = [f"{s.x} is independent of {s.y}." if not s.given else f"{s.x} and {s.y} are independent given {list_text(s.given)}."
                  for s in independencies]
    n = len(variables)
    text = (f"Premise: Suppose there is a closed system of {n} variables, {list_text(variables)}. "
            f"All the statistical relations among these {n} variables are as follows: ")
    text += " ".join(correlations)
    if correlations and statements:
        text += " However, "
    return text + " ".join(statements)


def hypothesis_text(template: str, x: str, y: str) -> str:
    """The hypothesis sentence of a template for the ordered pair (x, y) as it appears in the file."""
    forms = {
        "parent": f"{x} directly causes {y}.",
        "child": f"{x} directly causes {y}.",
        "non-parent ancestor": f"{x} causes something else which causes {y}.",
        "non-child descendant": f"{x} is a cause for {y}, but not a direct one.",
        "has_collider": f"There exists at least one collider (i.e., common effect) of {x} and {y}.",
        "has_confounder": f"There exists at least one confounder (i.e., common cause) of {x} and {y}.",
    }
    return forms[template]


# The relation each template's sentence asserts about its ordered pair (x, y).
TEMPLATE_RELATION = {
    "parent": "parent", "child": "parent",                 # "x directly causes y"
    "non-parent ancestor": "non-parent ancestor",          # "x causes something else which causes y"
    "non-child descendant": "non-parent ancestor",         # "x is a cause for y, but not a direct one"
    "has_collider": "has_collider", "has_confounder": "has_confounder",
}


def _ordered_pair(template: str, a: str, b: str, rng: random.Random) -> tuple[str, str]:
    """(x, y) for a pair a < b as the real file orders it for this template."""
    if template == "parent":
        return a, b          # "A directly causes B": lower letter first
    if template == "child":
        return b, a          # "B directly causes A"
    if template in ("has_collider", "has_confounder"):
        return a, b          # "... of A and B": always in letter order
    return (a, b) if rng.random() < 0.5 else (b, a)   # the mediated-cause templates use both orders


# ---- generation ------------------------------------------------------------------------------

def random_dag(variables: list[str], rng: random.Random) -> nx.DiGraph:
    """A DAG with a random causal order and each forward edge present with a random density."""
    order = variables[:]
    rng.shuffle(order)
    density = rng.uniform(0.2, 0.8)
    g = nx.DiGraph()
    g.add_nodes_from(variables)
    g.add_edges_from((a, b) for i, a in enumerate(order) for b in order[i + 1:] if rng.random() < density)
    return g


def generate(n: int, seed: int = 0, num_variables: tuple[int, ...] = (2, 3, 4, 5, 6),
             positive_rate: float = 0.5, max_tries: int = 50) -> list[TaskItem]:
    """n new items, reproducible by seed.

    N cycles through `num_variables` and the template through all six. Each item aims at label
    "yes" with probability `positive_rate` (the real file has about 0.15; 0.5 makes accuracy
    meaningful) by redrawing the graph and the pair up to `max_tries` times; some targets are
    impossible (with N = 2 no causal relation is ever entailed) and then keep the last draw.
    """
    rng = random.Random(seed)
    items = []
    for k in range(n):
        size = num_variables[k % len(num_variables)]
        template = TEMPLATES[(k // len(num_variables)) % len(TEMPLATES)]
        want = rng.random() < positive_rate
        variables = variable_names(size)
        for _ in range(max_tries):
            dag = random_dag(variables, rng)
            independencies = implied_independencies(dag)
            dags = consistent_dags(cpdag_from_dag(dag))  # the class straight from skeleton + v-structures
            pairs = []
            for a, b in combinations(variables, 2):
                x, y = _ordered_pair(template, a, b, rng)
                pairs.append((x, y, holds_in_every(TEMPLATE_RELATION[template], dags, x, y)))
            matching = [p for p in pairs if p[2] == want]
            if matching:
                break
        x, y, label = rng.choice(matching or pairs)
        prompt = premise_text(variables, independencies) + "\nHypothesis: " + hypothesis_text(template, x, y)
        items.append(TaskItem(
            id=f"corr2cause-gen-{seed}-{k}",
            prompt=prompt,
            answer="yes" if label else "no",
            meta={"template": template, "num_variables": size, "class_size": len(dags),
                  "true_dag": sorted(dag.edges)},
        ))
    return items
