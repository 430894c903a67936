"""Causal relations between two variables, in one DAG and across a Markov equivalence class.

These are the six Corr2Cause hypothesis relations. A hypothesis is valid (label 1) when the
relation holds in *every* DAG of the class the premise determines, and invalid otherwise — even
when it holds in some members — because the premise alone cannot establish it.

Definitions (x, y distinct; "path" means a directed path):
  parent               x -> y                                  "x directly causes y"
  child                y -> x                                  "y directly causes x"
  non-parent ancestor  x -> m -> ... -> y with m != y          "x causes something else which causes y"
                       (an indirect causal path; a direct edge x -> y may also exist)
  non-child descendant the same with x and y swapped            "y is a cause for x, but not a direct one"
  has_collider         some z != x, y with a path x ~> z that avoids y and a path y ~> z that avoids x:
                       z is a collider x -> ... -> z <- ... <- y on some path between x and y
                       ("a common effect of x and y", not merely an effect of x *through* y)
  has_confounder       some z != x, y with a path z ~> x that avoids y and a path z ~> y that avoids x:
                       a fork x <- ... <- z -> ... -> y on some path between x and y
                       ("a common cause of x and y" that does not act on one only through the other)
The two path conditions are equivalent to "the paths share only z": follow both paths until they
first meet; the prefixes are disjoint and end at a node other than x and y.
docs/causal.md records how these readings were checked against the Corr2Cause gold labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import networkx as nx

from clmkit.causal.graph import require_known

RELATIONS = ("parent", "child", "non-parent ancestor", "non-child descendant", "has_collider", "has_confounder")


def is_parent(g: nx.DiGraph, x: str, y: str) -> bool:
    return g.has_edge(x, y)


def is_child(g: nx.DiGraph, x: str, y: str) -> bool:
    return g.has_edge(y, x)


def is_ancestor(g: nx.DiGraph, x: str, y: str) -> bool:
    return x != y and nx.has_path(g, x, y)


def is_indirect_cause(g: nx.DiGraph, x: str, y: str) -> bool:
    """x causes some mediator m != y which causes y: a directed path of length >= 2."""
    return any(m != y and nx.has_path(g, m, y) for m in g.successors(x))


def has_common_descendant(g: nx.DiGraph, x: str, y: str) -> bool:
    """Some z != x, y is a descendant of both (possibly only through each other)."""
    return bool((nx.descendants(g, x) & nx.descendants(g, y)) - {x, y})


def has_common_ancestor(g: nx.DiGraph, x: str, y: str) -> bool:
    """Some z != x, y is an ancestor of both (possibly only through each other)."""
    return bool((nx.ancestors(g, x) & nx.ancestors(g, y)) - {x, y})


def _reach_avoiding(g: nx.DiGraph, source: str, avoid: str, reverse: bool = False) -> set[str]:
    """Nodes reachable from `source` along edges (against them if `reverse`) without visiting `avoid`."""
    h = g.subgraph(v for v in g.nodes if v != avoid)
    return nx.ancestors(h, source) if reverse else nx.descendants(h, source)


def has_collider(g: nx.DiGraph, x: str, y: str) -> bool:
    """A common effect z of x and y reached from each without passing through the other."""
    return bool((_reach_avoiding(g, x, y) & _reach_avoiding(g, y, x)) - {x, y})


def has_confounder(g: nx.DiGraph, x: str, y: str) -> bool:
    """A common cause z of x and y that reaches each without passing through the other."""
    return bool((_reach_avoiding(g, x, y, reverse=True) & _reach_avoiding(g, y, x, reverse=True)) - {x, y})


RELATION_TESTS: dict[str, Callable[[nx.DiGraph, str, str], bool]] = {
    "parent": is_parent,
    "child": is_child,
    "non-parent ancestor": is_indirect_cause,
    "non-child descendant": lambda g, x, y: is_indirect_cause(g, y, x),
    "has_collider": has_collider,
    "has_confounder": has_confounder,
}


def holds(relation: str, g: nx.DiGraph, x: str, y: str) -> bool:
    if relation not in RELATION_TESTS:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    require_known(g, [x, y])
    return RELATION_TESTS[relation](g, x, y)


def holds_in_every(relation: str, dags: Iterable[nx.DiGraph], x: str, y: str) -> bool:
    """Is the relation entailed by the class? (True for all members; an empty class entails nothing.)"""
    dags = list(dags)
    return bool(dags) and all(holds(relation, g, x, y) for g in dags)
