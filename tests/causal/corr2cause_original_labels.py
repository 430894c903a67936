"""Recompute a Corr2Cause gold label the way the dataset's own generator did, to explain misses.

The original generator (causalNLP/corr2cause, dataset_generation/main.cpp) works on variables
1..n (A = 1, ...). It enumerates one representative DAG U per isomorphism class (the smallest
upper-triangular edge code), lists the labelled DAGs of a Markov equivalence class as pairs
(U, perm) where the labelled DAG is U relabelled by node k -> perm[k] (perm = the first
permutation, in lexicographic order, that produces it), and computes for every pair (i, j) bits
of six path relations in U by walking all simple paths between i and j:
  bit 0 parent (i -> j), bit 2 child (j -> i), bit 1 / bit 3 an all-forward / all-backward path of
  length >= 2, bit 4 a path i -> ... -> z <- ... <- j, bit 5 a path i <- ... <- z -> j
  (its scan from the j end stops after one edge).
A hypothesis is labelled 1 when its bit is set in every member of the class — but the member's
bits are read as U.bits[perm[i]][perm[j]], where the relabelling calls for perm^-1. The two
coincide when perm is its own inverse; otherwise the relation of a different pair is read.

`generator_label(problem, dags, index_bug=True)` reproduces that computation on our class;
with index_bug=False it reads the right pair. Tests use it to show that every row where our
engine and the gold label disagree is a row where the index bug changes the label.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import permutations

import networkx as nx

from clmkit.causal.solve import Corr2CauseProblem


def _edge_code_index(n: int) -> dict[tuple[int, int], int]:
    pairs = [(i, j) for i in range(1, n) for j in range(i + 1, n + 1)]
    return {p: k for k, p in enumerate(pairs)}


def canonical_code(dag: nx.DiGraph, n: int) -> int:
    """The smallest edge code over all upper-triangular relabellings (= topological orders)."""
    index = _edge_code_index(n)
    best = None
    for order in nx.all_topological_sorts(dag):
        position = {v: k + 1 for k, v in enumerate(order)}
        code = sum(1 << index[(position[a], position[b])] for a, b in dag.edges)
        best = code if best is None else min(best, code)
    return best


@lru_cache(maxsize=None)
def representative(code: int, n: int) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(1, n + 1))
    g.add_edges_from(pair for pair, k in _edge_code_index(n).items() if code >> k & 1)
    return g


def path_bits(g: nx.DiGraph, i: int, j: int) -> int:
    bits = 0
    for path in nx.all_simple_paths(g.to_undirected(), i, j):
        steps = len(path) - 1
        if steps == 1:
            bits |= 1 if g.has_edge(i, j) else 4
            continue
        forward = next((k for k in range(steps) if not g.has_edge(path[k], path[k + 1])), steps)
        backward = next((k for k in range(steps) if not g.has_edge(path[-1 - k], path[-2 - k])), steps)
        if forward == steps:
            bits |= 2
        elif backward == steps:
            bits |= 8
        elif forward + backward == steps:
            bits |= 16
        else:
            into_i = next((k for k in range(steps) if not g.has_edge(path[k + 1], path[k])), steps)
            last_into_j = 1 if g.has_edge(path[-2], path[-1]) else 0
            bits |= 32 if into_i + last_into_j == steps else 64
    return bits


@lru_cache(maxsize=None)
def representative_bits(code: int, n: int) -> dict[tuple[int, int], int]:
    g = representative(code, n)
    return {(a, b): path_bits(g, a, b) for a in g for b in g if a != b}


def first_permutation(code: int, dag: nx.DiGraph, n: int) -> dict[int, int]:
    g, target = representative(code, n), set(dag.edges)
    for perm in permutations(range(1, n + 1)):
        mapping = dict(zip(range(1, n + 1), perm))
        if {(mapping[a], mapping[b]) for a, b in g.edges} == target:
            return mapping
    raise AssertionError("the representative does not relabel into this DAG")


def generator_label(problem: Corr2CauseProblem, dags: list[nx.DiGraph], index_bug: bool = True) -> int:
    n = len(problem.variables)
    number = {v: k + 1 for k, v in enumerate(problem.variables)}
    x, y = number[problem.x], number[problem.y]
    # The verbaliser only states hypotheses for i < j; the text's (x, y) maps back to one bit.
    if problem.relation == "parent":
        bit, i, j = (0, x, y) if x < y else (2, y, x)
    elif problem.relation == "non-parent ancestor":
        bit, i, j = (1, x, y) if x < y else (3, y, x)
    else:
        bit, i, j = (4 if problem.relation == "has_collider" else 5), min(x, y), max(x, y)
    hits = 0
    for dag in dags:
        labelled = nx.relabel_nodes(dag, number)
        code = canonical_code(labelled, n)
        perm = first_permutation(code, labelled, n)
        read = perm if index_bug else {v: k for k, v in perm.items()}
        hits += representative_bits(code, n)[(read[i], read[j])] >> bit & 1
    return int(hits == len(dags))
