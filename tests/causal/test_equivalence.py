"""PC with an oracle -> CPDAG -> the Markov equivalence class, against brute force."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings

from clmkit.causal.dsep import implied_independencies, independence
from clmkit.causal.equivalence import (
    UnfaithfulError,
    consistent_dags,
    cpdag_from_dag,
    cpdag_from_independencies,
    markov_equivalence_class,
)
from clmkit.causal.graph import parse_edge_list
from tests.causal.random_dags import all_dags, dags, orientations_with_same_class


def edge_sets(graphs) -> set[frozenset]:
    return {frozenset(g.edges) for g in graphs}


def test_every_four_node_class_by_brute_force():
    """All 543 DAGs on four nodes, grouped by what they imply, are exactly the classes PC finds."""
    names = ["A", "B", "C", "D"]
    classes = defaultdict(set)
    for g in all_dags(names):
        classes[implied_independencies(g)].add(frozenset(g.edges))
    assert sum(len(c) for c in classes.values()) == 543
    assert len(classes) == 185   # the number of Markov equivalence classes of 4-node DAGs
    for independencies, members in classes.items():
        assert edge_sets(markov_equivalence_class(names, independencies)) == members


@settings(max_examples=40, deadline=None)
@given(dags())
def test_class_of_a_random_dag(g):
    independencies = implied_independencies(g)
    members = markov_equivalence_class(sorted(g.nodes), independencies)
    assert frozenset(g.edges) in edge_sets(members)                       # the truth is in the class
    assert len(edge_sets(members)) == len(members)                        # each member once
    for h in members[:4]:
        assert implied_independencies(h) == independencies               # members imply exactly the input
    assert cpdag_from_independencies(g.nodes, independencies) == cpdag_from_dag(g)


@settings(max_examples=40, deadline=None)
@given(dags(max_nodes=5))
def test_enumeration_equals_brute_force_orientations(g):
    assert edge_sets(consistent_dags(cpdag_from_dag(g))) == set(orientations_with_same_class(g))


def test_known_cpdags():
    collider = cpdag_from_dag(parse_edge_list("A -> C, B -> C, C -> D"))
    assert collider.directed == {("A", "C"), ("B", "C"), ("C", "D")}   # C -> D forced by Meek R1
    assert collider.undirected == frozenset()
    chain = cpdag_from_dag(parse_edge_list("A -> B, B -> C"))
    assert chain.directed == frozenset() and chain.undirected == {("A", "B"), ("B", "C")}
    assert len(consistent_dags(chain)) == 3


def test_unfaithful_statements_are_rejected():
    # A independent of B given C, and of C given B, but not marginally: no DAG implies exactly that.
    with pytest.raises(UnfaithfulError):
        markov_equivalence_class("ABC", {independence("A", "B", ["C"]), independence("A", "C", ["B"])})
