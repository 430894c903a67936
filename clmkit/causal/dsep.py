"""d-separation and the full set of (conditional) independencies a DAG implies.

Under the causal Markov and faithfulness assumptions, X and Y are independent given Z in the data
exactly when Z d-separates X from Y in the causal DAG. networkx implements d-separation
(`nx.is_d_separator`); this module adds the statement type and the enumeration over all
conditioning sets, which is what the Corr2Cause premises spell out.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import networkx as nx

from clmkit.causal.graph import require_known


@dataclass(frozen=True, order=True)
class Independence:
    """x ⊥ y | given. Normalised so that x < y; build with `independence()`."""

    x: str
    y: str
    given: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.given:
            return f"{self.x} ⊥ {self.y}"
        return f"{self.x} ⊥ {self.y} | {', '.join(self.given)}"


def independence(x: str, y: str, given: tuple[str, ...] | list[str] | frozenset[str] | set[str] = ()) -> Independence:
    if x == y:
        raise ValueError(f"an independence statement needs two different variables, got {x!r} twice")
    given = tuple(sorted(given))
    if x in given or y in given:
        raise ValueError(f"{x} ⊥ {y} | {given}: a variable cannot be in its own conditioning set")
    a, b = sorted((x, y))
    return Independence(a, b, given)


def is_d_separated(g: nx.DiGraph, x: str, y: str, given: tuple[str, ...] | list[str] | set[str] = ()) -> bool:
    require_known(g, [x, y, *given])
    return nx.is_d_separator(g, {x}, {y}, set(given))


def implied_independencies(g: nx.DiGraph) -> frozenset[Independence]:
    """Every statement x ⊥ y | Z (x, y distinct, Z any subset of the other nodes) that holds in g."""
    nodes = sorted(g.nodes)
    found = set()
    for x, y in combinations(nodes, 2):
        others = [v for v in nodes if v not in (x, y)]
        for k in range(len(others) + 1):
            for given in combinations(others, k):
                if nx.is_d_separator(g, {x}, {y}, set(given)):
                    found.add(Independence(x, y, given))
    return frozenset(found)


def marginally_dependent_pairs(nodes: list[str] | tuple[str, ...], independencies: frozenset[Independence]) -> set[tuple[str, str]]:
    """Pairs (x < y) with no unconditional independence: the "X correlates with Y" statements."""
    marginal = {(s.x, s.y) for s in independencies if not s.given}
    return {(x, y) for x, y in combinations(sorted(nodes), 2) if (x, y) not in marginal}
