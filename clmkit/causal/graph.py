"""Causal DAGs as `networkx.DiGraph`s: build them from edge lists, and fail loudly on bad input.

A causal graph here is a plain `nx.DiGraph` whose nodes are variable names (str) and whose edge
`a -> b` means "a is a direct cause of b". Everything in `clmkit.causal` takes and returns these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import networkx as nx

Edge = tuple[str, str]


class GraphError(ValueError):
    """A graph description that cannot be a causal DAG."""


class CycleError(GraphError):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("the causal graph has a cycle: " + " -> ".join([*cycle, cycle[0]]))


class UnknownVariableError(GraphError):
    def __init__(self, names: Iterable[str], known: Iterable[str]):
        self.names = sorted(set(names))
        super().__init__(f"unknown variable(s) {', '.join(self.names)}; known: {', '.join(sorted(known))}")


def dag_from_edges(edges: Iterable[Edge], nodes: Iterable[str] | None = None) -> nx.DiGraph:
    """A DAG with exactly `nodes` (when given; edges may then only use them) and `edges`."""
    edges = list(edges)
    g = nx.DiGraph()
    if nodes is not None:
        g.add_nodes_from(nodes)
        unknown = {v for edge in edges for v in edge} - set(g.nodes)
        if unknown:
            raise UnknownVariableError(unknown, g.nodes)
    g.add_edges_from(edges)
    require_acyclic(g)
    return g


def require_acyclic(g: nx.DiGraph) -> None:
    """Raise `CycleError` naming one directed cycle if `g` has any (self-loops included)."""
    try:
        cycle_edges = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    raise CycleError([a for a, _ in cycle_edges])


def require_known(g: nx.DiGraph, names: Iterable[str]) -> None:
    unknown = set(names) - set(g.nodes)
    if unknown:
        raise UnknownVariableError(unknown, g.nodes)


_ARROW = re.compile(r"^\s*([\w.]+)\s*(->|<-)\s*([\w.]+)\s*$")


def parse_edge_list(text: str, nodes: Iterable[str] | None = None) -> nx.DiGraph:
    """Parse "A -> B, B -> C; D <- C" (commas, semicolons or newlines between edges) into a DAG."""
    edges: list[Edge] = []
    for part in re.split(r"[,;\n]", text):
        if not part.strip():
            continue
        m = _ARROW.match(part)
        if not m:
            raise GraphError(f"cannot read edge {part.strip()!r}; write edges as 'A -> B' or 'B <- A'")
        a, arrow, b = m.groups()
        edges.append((a, b) if arrow == "->" else (b, a))
    return dag_from_edges(edges, nodes)


def undirected_skeleton(g: nx.DiGraph) -> nx.Graph:
    return nx.Graph(g.to_undirected(as_view=True))


def v_structures(g: nx.DiGraph) -> set[tuple[str, str, str]]:
    """Unshielded colliders (a, c, b) with a -> c <- b, a and b non-adjacent, a < b."""
    found = set()
    for c in g.nodes:
        parents = sorted(g.predecessors(c))
        for i, a in enumerate(parents):
            for b in parents[i + 1:]:
                if not g.has_edge(a, b) and not g.has_edge(b, a):
                    found.add((a, c, b))
    return found
