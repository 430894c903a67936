"""Markov equivalence: from a set of independencies to every DAG that implies exactly that set.

Pipeline (Spirtes–Glymour–Scheines PC algorithm with a perfect independence oracle):
  1. skeleton   — start from the complete graph; drop x - y as soon as some conditioning set S drawn
                  from the current neighbours of x (or y) makes x ⊥ y | S; remember S as sepset(x, y).
  2. v-structures — for every unshielded triple x - z - y: if z is not in sepset(x, y), orient
                  x -> z <- y (conditioning on a collider would have connected x and y).
  3. Meek rules — orient every edge whose direction is forced by acyclicity + "no new v-structure".
The result is the CPDAG (completed partially directed acyclic graph). Its directed edges are shared
by every DAG of the class; the undirected ones can go either way in some member.
  4. enumerate — orient undirected edges one at a time, re-applying the Meek rules after each
                  choice; every leaf is a DAG of the class, and each appears once.

Two DAGs are Markov equivalent iff they have the same skeleton and the same v-structures
(Verma & Pearl 1990), so checking one member against the input independencies checks them all.

A PDAG is kept as an `nx.DiGraph` where an undirected edge a - b is the pair of arcs a -> b, b -> a.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import combinations

import networkx as nx

from clmkit.causal.dsep import Independence, implied_independencies, independence
from clmkit.causal.graph import undirected_skeleton, v_structures


class UnfaithfulError(ValueError):
    """No DAG over the variables implies exactly the given independencies."""


@dataclass(frozen=True)
class CPDAG:
    nodes: tuple[str, ...]
    directed: frozenset[tuple[str, str]]     # a -> b in every DAG of the class
    undirected: frozenset[tuple[str, str]]   # a - b (a < b): both orientations occur in the class

    def as_pdag(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.directed)
        for a, b in self.undirected:
            g.add_edges_from([(a, b), (b, a)])
        return g

    @staticmethod
    def from_pdag(g: nx.DiGraph) -> CPDAG:
        directed = frozenset((a, b) for a, b in g.edges if not g.has_edge(b, a))
        undirected = frozenset((a, b) for a, b in g.edges if g.has_edge(b, a) and a < b)
        return CPDAG(tuple(sorted(g.nodes)), directed, undirected)


# ---- PDAG edge predicates ------------------------------------------------------------------------

def _directed(g: nx.DiGraph, a: str, b: str) -> bool:
    return g.has_edge(a, b) and not g.has_edge(b, a)


def _undirected(g: nx.DiGraph, a: str, b: str) -> bool:
    return g.has_edge(a, b) and g.has_edge(b, a)


def _adjacent(g: nx.DiGraph, a: str, b: str) -> bool:
    return g.has_edge(a, b) or g.has_edge(b, a)


def _orient(g: nx.DiGraph, a: str, b: str) -> None:
    """Turn a - b into a -> b."""
    if g.has_edge(b, a):
        g.remove_edge(b, a)


# ---- 1. skeleton -------------------------------------------------------------------------------

def pc_skeleton(nodes: Iterable[str], independencies: Iterable[Independence]) -> tuple[nx.Graph, dict[frozenset[str], tuple[str, ...]]]:
    """PC-stable skeleton search against the oracle "is this statement in `independencies`?"."""
    oracle = set(independencies)
    skeleton = nx.complete_graph(sorted(nodes))
    sepsets: dict[frozenset[str], tuple[str, ...]] = {}
    depth = 0
    while any(skeleton.degree(v) - 1 >= depth for v in skeleton.nodes):
        # PC-stable: neighbourhoods are frozen at the start of each depth, so the edge order is irrelevant.
        neighbours = {v: set(skeleton[v]) for v in skeleton.nodes}
        for x, y in sorted(skeleton.edges):
            for a, b in ((x, y), (y, x)):
                if not skeleton.has_edge(a, b):
                    break
                for given in combinations(sorted(neighbours[a] - {b}), depth):
                    if independence(a, b, given) in oracle:
                        skeleton.remove_edge(a, b)
                        sepsets[frozenset((a, b))] = given
                        break
        depth += 1
    return skeleton, sepsets


# ---- 2. v-structures ---------------------------------------------------------------------------

def orient_v_structures(skeleton: nx.Graph, sepsets: dict[frozenset[str], tuple[str, ...]]) -> nx.DiGraph:
    pdag = nx.DiGraph()
    pdag.add_nodes_from(skeleton.nodes)
    for a, b in skeleton.edges:
        pdag.add_edges_from([(a, b), (b, a)])
    for z in sorted(skeleton.nodes):
        for x, y in combinations(sorted(skeleton[z]), 2):
            if skeleton.has_edge(x, y):
                continue  # shielded triple: says nothing
            if z not in sepsets.get(frozenset((x, y)), ()):
                _orient(pdag, x, z)
                _orient(pdag, y, z)
    return pdag


# ---- 3. Meek rules -----------------------------------------------------------------------------

def apply_meek_rules(pdag: nx.DiGraph) -> nx.DiGraph:
    """Orient, in place, every undirected edge forced by Meek's rules R1–R4; returns `pdag`.

    R1 a -> b - c, a !~ c            => b -> c   (else a -> b <- c would be a new v-structure)
    R2 a -> c -> b, a - b            => a -> b   (else a -> c -> b -> a is a cycle)
    R3 a - c -> b, a - d -> b, a - b, c !~ d  => a -> b   (else b -> a forces a cycle via R2)
    R4 a - b, a ~ c, c -> d -> b, c !~ b, a ~ d  => a -> b  (needed once background orientations exist)
    """
    changed = True
    while changed:
        changed = False
        for a, b in sorted(e for e in pdag.edges if _undirected(pdag, *e)):
            if not _undirected(pdag, a, b):
                continue  # oriented earlier in this sweep
            if _forced(pdag, a, b):
                _orient(pdag, a, b)
                changed = True
    return pdag


def _forced(g: nx.DiGraph, a: str, b: str) -> bool:
    """Do R1–R4 force the undirected edge a - b to be a -> b?"""
    nodes = g.nodes
    # R1: some c -> a with c not adjacent to b.
    if any(_directed(g, c, a) and not _adjacent(g, c, b) for c in g.predecessors(a)):
        return True
    # R2: a -> c -> b.
    if any(_directed(g, a, c) and _directed(g, c, b) for c in g.successors(a)):
        return True
    # R3: two non-adjacent c, d with a - c -> b and a - d -> b.
    kites = [c for c in nodes if c not in (a, b) and _undirected(g, a, c) and _directed(g, c, b)]
    if any(not _adjacent(g, c, d) for c, d in combinations(kites, 2)):
        return True
    # R4: a ~ c, c -> d -> b, c not adjacent to b, a adjacent to d.
    for d in nodes:
        if d in (a, b) or not _directed(g, d, b) or not _adjacent(g, a, d):
            continue
        if any(c not in (a, b) and _directed(g, c, d) and _adjacent(g, a, c) and not _adjacent(g, c, b) for c in nodes):
            return True
    return False


# ---- the CPDAG ---------------------------------------------------------------------------------

def cpdag_from_independencies(nodes: Iterable[str], independencies: Iterable[Independence]) -> CPDAG:
    """PC with a perfect oracle: skeleton, v-structures, Meek closure."""
    skeleton, sepsets = pc_skeleton(nodes, independencies)
    return CPDAG.from_pdag(apply_meek_rules(orient_v_structures(skeleton, sepsets)))


def cpdag_from_dag(g: nx.DiGraph) -> CPDAG:
    """The CPDAG of g's class straight from its skeleton and v-structures (no independence tests)."""
    skeleton = undirected_skeleton(g)
    pdag = nx.DiGraph()
    pdag.add_nodes_from(g.nodes)
    for a, b in skeleton.edges:
        pdag.add_edges_from([(a, b), (b, a)])
    for x, z, y in v_structures(g):
        _orient(pdag, x, z)
        _orient(pdag, y, z)
    return CPDAG.from_pdag(apply_meek_rules(pdag))


# ---- 4. enumerate the class --------------------------------------------------------------------

def consistent_dags(cpdag: CPDAG) -> list[nx.DiGraph]:
    """Every DAG with the CPDAG's skeleton and v-structures, each once, in a deterministic order."""
    pdag = cpdag.as_pdag()
    target = v_structures(nx.DiGraph(list(cpdag.directed)))  # the class's v-structures are all directed
    target = {t for t in target if not pdag.has_edge(t[0], t[2]) and not pdag.has_edge(t[2], t[0])}
    return [dag for dag in _extensions(pdag) if v_structures(dag) == target]


def _extensions(pdag: nx.DiGraph) -> Iterator[nx.DiGraph]:
    undirected = sorted((a, b) for a, b in pdag.edges if a < b and _undirected(pdag, a, b))
    if not undirected:
        if nx.is_directed_acyclic_graph(pdag):
            yield nx.DiGraph(pdag)
        return
    a, b = undirected[0]
    for head, tail in ((a, b), (b, a)):
        # After the Meek closure every undirected edge can still go either way in some member
        # (Meek 1995), so both branches lead to DAGs of the class; the leaf checks guard that.
        branch = pdag.copy()
        _orient(branch, head, tail)
        yield from _extensions(apply_meek_rules(branch))


def markov_equivalence_class(nodes: Iterable[str], independencies: Iterable[Independence]) -> list[nx.DiGraph]:
    """All DAGs over `nodes` whose d-separations are exactly `independencies`.

    Raises `UnfaithfulError` when no DAG fits (the statements contradict each other, or the list is
    not closed the way a DAG's independencies must be).
    """
    nodes = sorted(nodes)
    independencies = frozenset(independencies)
    dags = consistent_dags(cpdag_from_independencies(nodes, independencies))
    if not dags:
        raise UnfaithfulError("the independencies orient the graph into a cycle: no DAG implies them")
    implied = implied_independencies(dags[0])  # equivalent DAGs share their d-separations (Verma–Pearl)
    if implied != independencies:
        missing = sorted(independencies - implied)
        extra = sorted(implied - independencies)
        detail = f"stated but impossible here: {missing[0]}" if missing else f"implied but not stated: {extra[0]}"
        raise UnfaithfulError(f"no DAG implies exactly these independencies ({detail})")
    return dags
