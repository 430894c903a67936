"""Deterministic structural causal models over yes/no variables, and counterfactuals on them.

The CounterBench rule language maps onto boolean mechanisms:
  "X causes Y"                    Y := X
  "X causes not Y"                Y := not X
  "not X causes Y"                Y := not X
  "A and B together cause C"      C := A and B
  "A or B causes C"               C := A or B
  "A and not B together cause C"  C := A and not B
  "A and B together cause not C"  C := not (A and B)
Variables without a mechanism are exogenous (root causes); their values are what we do not know.

A counterfactual query is answered by Pearl's three steps:
  1. abduction  — keep every assignment of the exogenous variables under which the factual world
                  (the model run with no intervention) agrees with the evidence;
  2. action     — replace the mechanisms of the intervened variables by constants;
  3. prediction — run the modified model from each kept assignment and read the query variable.
The answer is determined when every kept assignment gives the same value, and undetermined
otherwise. Exogenous variables are few (CounterBench has at most a handful), so step 1 simply
enumerates all 2^k assignments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import product

import networkx as nx

from clmkit.causal.graph import GraphError, dag_from_edges, require_known

MAX_EXOGENOUS = 20  # 2^20 assignments: the enumeration's hard ceiling


class InconsistentEvidenceError(ValueError):
    """No assignment of the exogenous variables reproduces the observed facts."""


class TooLargeError(ValueError):
    """More exogenous variables than the exhaustive abduction will enumerate."""


@dataclass(frozen=True)
class Literal:
    name: str
    negated: bool = False

    def value(self, world: Mapping[str, bool]) -> bool:
        return world[self.name] != self.negated

    def __str__(self) -> str:
        return f"not {self.name}" if self.negated else self.name


@dataclass(frozen=True)
class Mechanism:
    """target := [not] (input_1 <gate> input_2 <gate> ...)."""

    target: str
    inputs: tuple[Literal, ...]
    gate: str = "and"        # "and" | "or"; irrelevant with one input
    negated: bool = False    # "... cause(s) not <target>"

    def __post_init__(self) -> None:
        if self.gate not in ("and", "or"):
            raise ValueError(f"gate must be 'and' or 'or', not {self.gate!r}")
        if not self.inputs:
            raise ValueError(f"mechanism for {self.target} has no inputs")

    def value(self, world: Mapping[str, bool]) -> bool:
        values = [literal.value(world) for literal in self.inputs]
        out = all(values) if self.gate == "and" else any(values)
        return out != self.negated

    def __str__(self) -> str:
        body = f" {self.gate} ".join(map(str, self.inputs))
        return f"{self.target} := {'not ' if self.negated else ''}{'(' + body + ')' if len(self.inputs) > 1 else body}"


class SCM:
    """A deterministic SCM: one mechanism per endogenous variable, the rest exogenous."""

    def __init__(self, mechanisms: Iterable[Mechanism], variables: Iterable[str] = ()):
        self.mechanisms: dict[str, Mechanism] = {}
        for mechanism in mechanisms:
            if mechanism.target in self.mechanisms:
                raise GraphError(f"{mechanism.target} has two mechanisms: "
                                 f"{self.mechanisms[mechanism.target]} and {mechanism}")
            self.mechanisms[mechanism.target] = mechanism
        edges = [(literal.name, m.target) for m in self.mechanisms.values() for literal in m.inputs]
        names = set(variables) | {v for edge in edges for v in edge} | set(self.mechanisms)
        self.graph: nx.DiGraph = dag_from_edges(edges, sorted(names))  # raises CycleError
        self.order: list[str] = list(nx.lexicographical_topological_sort(self.graph))
        self.exogenous: list[str] = [v for v in self.order if v not in self.mechanisms]

    @property
    def variables(self) -> list[str]:
        return self.order

    def evaluate(self, exogenous: Mapping[str, bool], interventions: Mapping[str, bool] | None = None) -> dict[str, bool]:
        """Run the model: interventions override mechanisms (and exogenous values)."""
        interventions = interventions or {}
        world: dict[str, bool] = {}
        for v in self.order:
            if v in interventions:
                world[v] = interventions[v]
            elif v in self.mechanisms:
                world[v] = self.mechanisms[v].value(world)
            else:
                world[v] = exogenous[v]
        return world

    def consistent_backgrounds(self, evidence: Mapping[str, bool]) -> list[dict[str, bool]]:
        """Abduction: every exogenous assignment whose factual world matches the evidence."""
        require_known(self.graph, evidence)
        if len(self.exogenous) > MAX_EXOGENOUS:
            raise TooLargeError(f"{len(self.exogenous)} root causes: abduction enumerates at most {MAX_EXOGENOUS}")
        kept = []
        for values in product((False, True), repeat=len(self.exogenous)):
            background = dict(zip(self.exogenous, values))
            world = self.evaluate(background)
            if all(world[v] == value for v, value in evidence.items()):
                kept.append(background)
        return kept


def counterfactual(scm: SCM, evidence: Mapping[str, bool], interventions: Mapping[str, bool], query: str) -> bool | None:
    """Value of `query` had `interventions` been made, given what was observed; None if undetermined."""
    require_known(scm.graph, [*interventions, query])
    backgrounds = scm.consistent_backgrounds(evidence)
    if not backgrounds:
        raise InconsistentEvidenceError("no setting of the root causes reproduces the observations "
                                        + ", ".join(f"{v}={'yes' if b else 'no'}" for v, b in evidence.items()))
    outcomes = {scm.evaluate(background, interventions)[query] for background in backgrounds}
    return outcomes.pop() if len(outcomes) == 1 else None
