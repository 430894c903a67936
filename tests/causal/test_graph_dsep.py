"""Graph helpers and d-separation, checked against the textbook path definition."""

from __future__ import annotations

from itertools import combinations

import networkx as nx
import pytest
from hypothesis import given, settings

from clmkit.causal.dsep import implied_independencies, independence, is_d_separated, marginally_dependent_pairs
from clmkit.causal.graph import CycleError, GraphError, UnknownVariableError, dag_from_edges, parse_edge_list, v_structures
from tests.causal.random_dags import d_separated_by_paths, dags


def test_parse_edge_list_both_arrow_directions():
    g = parse_edge_list("A -> B, C <- B; D->C\n")
    assert sorted(g.edges) == [("A", "B"), ("B", "C"), ("D", "C")]


def test_cycle_error_names_the_cycle():
    with pytest.raises(CycleError) as e:
        parse_edge_list("A -> B, B -> C, C -> A, C -> D")
    assert set(e.value.cycle) == {"A", "B", "C"}
    assert "cycle" in str(e.value) and "->" in str(e.value)


def test_self_loop_is_a_cycle():
    with pytest.raises(CycleError):
        dag_from_edges([("A", "A")])


def test_unknown_variable():
    with pytest.raises(UnknownVariableError, match="Z"):
        dag_from_edges([("A", "Z")], nodes=["A", "B"])
    with pytest.raises(UnknownVariableError):
        is_d_separated(parse_edge_list("A -> B"), "A", "Q")


def test_unreadable_edge():
    with pytest.raises(GraphError, match="cannot read edge"):
        parse_edge_list("A causes B")


def test_classic_triples():
    chain, fork, collider = parse_edge_list("A -> B, B -> C"), parse_edge_list("B -> A, B -> C"), parse_edge_list("A -> B, C -> B")
    for g in (chain, fork):
        assert not is_d_separated(g, "A", "C") and is_d_separated(g, "A", "C", ["B"])
        assert implied_independencies(g) == {independence("A", "C", ["B"])}
    assert is_d_separated(collider, "A", "C") and not is_d_separated(collider, "A", "C", ["B"])
    assert implied_independencies(collider) == {independence("C", "A")}
    assert v_structures(collider) == {("A", "B", "C")}


def test_independence_is_normalised_and_validated():
    assert independence("B", "A", ["D", "C"]) == independence("A", "B", ("C", "D"))
    with pytest.raises(ValueError):
        independence("A", "A")
    with pytest.raises(ValueError):
        independence("A", "B", ["A"])


@settings(max_examples=60, deadline=None)
@given(dags(max_nodes=5))
def test_d_separation_matches_path_definition(g):
    nodes = sorted(g.nodes)
    implied = implied_independencies(g)
    for x, y in combinations(nodes, 2):
        others = [v for v in nodes if v not in (x, y)]
        for k in range(len(others) + 1):
            for z in combinations(others, k):
                expected = d_separated_by_paths(g, x, y, set(z))
                assert is_d_separated(g, x, y, z) == expected
                assert (independence(x, y, z) in implied) == expected


@settings(max_examples=40, deadline=None)
@given(dags())
def test_correlated_pairs_are_the_marginally_dependent_ones(g):
    pairs = marginally_dependent_pairs(sorted(g.nodes), implied_independencies(g))
    skeleton = g.to_undirected()
    for x, y in combinations(sorted(g.nodes), 2):
        # Marginally dependent iff some trek (common ancestor or a directed path) links them.
        connected = bool((nx.ancestors(g, x) | {x}) & (nx.ancestors(g, y) | {y}))
        assert ((x, y) in pairs) == connected
    assert all(nx.has_path(skeleton, x, y) for x, y in pairs)
