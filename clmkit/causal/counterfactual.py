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
  1. abduction  — keep every assignment of the exogenous variables (background) under which the
                  factual world (the model with no intervention) agrees with the evidence;
  2. action     — replace the mechanisms of the intervened variables by constants;
  3. prediction — solve the modified model from each kept background and read the query variable.
The answer is determined when every kept background gives the same value, and undetermined
otherwise. Exogenous variables are few (CounterBench has at most a handful), so step 1 simply
enumerates all 2^k backgrounds.

Rules may be cyclic ("Scud or Yobb cause not Wrenk" with Wrenk among Yobb's causes). A world is
then a solution of the boolean equations as a system: the strongly connected components are
solved in causal order, each cyclic one by trying every assignment of its members. A background
counts only when the world it yields is unique — exactly one factual world agreeing with the
evidence (abduction) and exactly one supposed world (prediction); several solutions leave the
world open (`MultipleSolutionsError`: undetermined), none makes the rules contradict the
supposition (`NoSolutionError`). An acyclic model always has exactly one world per background.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import product

import networkx as nx

from clmkit.causal.graph import GraphError, require_known

MAX_EXOGENOUS = 20  # 2^20 assignments: the enumeration's hard ceiling (backgrounds, or one cycle's members)


class InconsistentEvidenceError(ValueError):
    """No assignment of the exogenous variables reproduces the observed facts."""


class TooLargeError(ValueError):
    """More exogenous variables (or variables on one cycle) than the exhaustive search will enumerate."""


class NoSolutionError(InconsistentEvidenceError):
    """Cyclic rules that no world satisfies under the supposition."""


class MultipleSolutionsError(ValueError):
    """Cyclic rules that leave the world open: several solutions for one background."""


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
    """A deterministic SCM: one mechanism per endogenous variable, the rest exogenous; cycles allowed."""

    def __init__(self, mechanisms: Iterable[Mechanism], variables: Iterable[str] = ()):
        self.mechanisms: dict[str, Mechanism] = {}
        for mechanism in mechanisms:
            if mechanism.target in self.mechanisms:
                raise GraphError(f"{mechanism.target} has two mechanisms: "
                                 f"{self.mechanisms[mechanism.target]} and {mechanism}")
            self.mechanisms[mechanism.target] = mechanism
        self.graph: nx.DiGraph = nx.DiGraph()
        self.graph.add_nodes_from(sorted(set(variables) | set(self.mechanisms)))
        self.graph.add_edges_from((literal.name, m.target) for m in self.mechanisms.values() for literal in m.inputs)
        # Strongly connected components in causal order (name order among independent ones);
        # a block of one variable without a self-loop is an ordinary acyclic step.
        condensed = nx.condensation(self.graph)
        self.blocks: list[list[str]] = [
            sorted(condensed.nodes[c]["members"])
            for c in nx.lexicographical_topological_sort(condensed, key=lambda c: min(condensed.nodes[c]["members"]))]
        self.order: list[str] = [v for block in self.blocks for v in block]
        self.exogenous: list[str] = [v for v in self.order if v not in self.mechanisms]
        self.cycles: list[list[str]] = [b for b in self.blocks if len(b) > 1 or self.graph.has_edge(b[0], b[0])]

    @property
    def variables(self) -> list[str]:
        return self.order

    def solutions(self, exogenous: Mapping[str, bool], interventions: Mapping[str, bool] | None = None) -> list[dict[str, bool]]:
        """Every world satisfying the mechanisms of the non-intervened variables (one if acyclic)."""
        interventions = interventions or {}
        worlds: list[dict[str, bool]] = [{}]
        for block in self.blocks:
            fixed = {v: interventions[v] if v in interventions else exogenous[v]
                     for v in block if v in interventions or v not in self.mechanisms}
            free = [v for v in block if v not in fixed]
            if block not in self.cycles:
                for world in worlds:
                    world.update(fixed)
                    for v in free:
                        world[v] = self.mechanisms[v].value(world)
                continue
            if len(free) > MAX_EXOGENOUS:
                raise TooLargeError(f"{len(free)} variables on one cycle: the search enumerates at most {MAX_EXOGENOUS}")
            solved = []
            for world in worlds:
                for values in product((False, True), repeat=len(free)):
                    trial = {**world, **fixed, **dict(zip(free, values))}
                    if all(self.mechanisms[v].value(trial) == trial[v] for v in free):
                        solved.append(trial)
            worlds = solved
        return worlds

    def evaluate(self, exogenous: Mapping[str, bool], interventions: Mapping[str, bool] | None = None) -> dict[str, bool]:
        """The world the model yields: interventions override mechanisms (and exogenous values)."""
        worlds = self.solutions(exogenous, interventions)
        if len(worlds) != 1:
            raise (NoSolutionError if not worlds else MultipleSolutionsError)(_solution_count(worlds, interventions))
        return worlds[0]

    def consistent_backgrounds(self, evidence: Mapping[str, bool]) -> list[dict[str, bool]]:
        """Abduction: every exogenous assignment under which exactly one factual world agrees with
        the evidence (MultipleSolutionsError when a cyclic model leaves several)."""
        require_known(self.graph, evidence)
        if len(self.exogenous) > MAX_EXOGENOUS:
            raise TooLargeError(f"{len(self.exogenous)} root causes: abduction enumerates at most {MAX_EXOGENOUS}")
        kept = []
        for values in product((False, True), repeat=len(self.exogenous)):
            background = dict(zip(self.exogenous, values))
            worlds = [w for w in self.solutions(background) if all(w[v] == value for v, value in evidence.items())]
            if len(worlds) > 1:
                raise MultipleSolutionsError(f"the cyclic rules allow {len(worlds)} factual worlds that agree with "
                                             "the observations")
            if worlds:
                kept.append(background)
        return kept


def _solution_count(worlds: list, interventions: Mapping[str, bool] | None) -> str:
    setting = ", ".join(f"{v}={'yes' if b else 'no'}" for v, b in (interventions or {}).items())
    where = f"under do({setting})" if setting else "in the factual world"
    return f"the cyclic rules have {len(worlds) or 'no'} solution{'' if len(worlds) == 1 else 's'} {where}"


def counterfactual(scm: SCM, evidence: Mapping[str, bool], interventions: Mapping[str, bool], query: str) -> bool | None:
    """Value of `query` had `interventions` been made, given what was observed; None if undetermined."""
    require_known(scm.graph, [*interventions, query])
    backgrounds = scm.consistent_backgrounds(evidence)
    if not backgrounds:
        raise InconsistentEvidenceError("no setting of the root causes reproduces the observations "
                                        + ", ".join(f"{v}={'yes' if b else 'no'}" for v, b in evidence.items()))
    outcomes = {scm.evaluate(background, interventions)[query] for background in backgrounds}  # one world each
    return outcomes.pop() if len(outcomes) == 1 else None
