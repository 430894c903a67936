"""Hypothesis strategies for small random DAGs, and brute-force references to test against."""

from __future__ import annotations

from itertools import combinations, product

import networkx as nx
from hypothesis import strategies as st

NAMES = "ABCDEF"


@st.composite
def dags(draw, min_nodes: int = 2, max_nodes: int = 6) -> nx.DiGraph:
    """A DAG over A, B, ... whose causal order is a random permutation (so edges go both ways in name order)."""
    n = draw(st.integers(min_nodes, max_nodes))
    names = list(NAMES[:n])
    order = draw(st.permutations(names))
    pairs = [(order[i], order[j]) for i in range(n) for j in range(i + 1, n)]
    present = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(p for p, keep in zip(pairs, present) if keep)
    return g


def d_separated_by_paths(g: nx.DiGraph, x: str, y: str, given: set[str]) -> bool:
    """Textbook d-separation: every simple path between x and y is blocked by `given`."""
    skeleton = g.to_undirected()
    for path in nx.all_simple_paths(skeleton, x, y):
        active = True
        for a, b, c in zip(path, path[1:], path[2:]):
            collider = g.has_edge(a, b) and g.has_edge(c, b)
            if collider:
                if b not in given and not (nx.descendants(g, b) & given):
                    active = False
            elif b in given:
                active = False
            if not active:
                break
        if active:
            return False
    return True


def all_dags(names: list[str]) -> list[nx.DiGraph]:
    """Every labelled DAG over `names` (543 for four nodes)."""
    pairs = list(combinations(names, 2))
    found = []
    for states in product((0, 1, 2), repeat=len(pairs)):   # 0 absent, 1 a -> b, 2 b -> a
        g = nx.DiGraph()
        g.add_nodes_from(names)
        g.add_edges_from((a, b) if s == 1 else (b, a) for (a, b), s in zip(pairs, states) if s)
        if nx.is_directed_acyclic_graph(g):
            found.append(g)
    return found


def orientations_with_same_class(g: nx.DiGraph) -> list[frozenset]:
    """Brute force: every acyclic orientation of g's skeleton with g's v-structures."""
    from clmkit.causal.graph import v_structures

    edges = sorted(tuple(sorted(e)) for e in g.to_undirected().edges)
    target = v_structures(g)
    found = []
    for flips in product((False, True), repeat=len(edges)):
        h = nx.DiGraph()
        h.add_nodes_from(g.nodes)
        h.add_edges_from((b, a) if flip else (a, b) for (a, b), flip in zip(edges, flips))
        if nx.is_directed_acyclic_graph(h) and v_structures(h) == target:
            found.append(frozenset(h.edges))
    return found


