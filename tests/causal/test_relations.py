"""The six Corr2Cause relations on single DAGs and across equivalence classes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from clmkit.causal.graph import UnknownVariableError, parse_edge_list
from clmkit.causal.relations import (
    RELATIONS,
    has_collider,
    has_common_ancestor,
    has_common_descendant,
    has_confounder,
    holds,
    holds_in_every,
    is_indirect_cause,
)
from tests.causal.random_dags import dags


def test_parent_child_and_mediated_cause():
    g = parse_edge_list("A -> B, B -> C, A -> C")
    assert holds("parent", g, "A", "B") and holds("child", g, "B", "A")
    assert not holds("parent", g, "B", "A")
    # A -> C directly AND through B: "A causes something else which causes C" holds.
    assert holds("non-parent ancestor", g, "A", "C")
    assert holds("non-child descendant", g, "C", "A")
    assert not holds("non-parent ancestor", g, "A", "B")   # only the direct edge


def test_collider_must_not_run_through_the_other_variable():
    g = parse_edge_list("A -> B, B -> C")
    assert has_common_descendant(g, "A", "B")       # C descends from both ...
    assert not has_collider(g, "A", "B")            # ... but from A only through B
    g.add_edge("A", "C")
    assert has_collider(g, "A", "B")                # now A -> C <- B is a collider path


def test_confounder_must_not_act_through_the_other_variable():
    g = parse_edge_list("Z -> A, A -> B")
    assert has_common_ancestor(g, "A", "B")
    assert not has_confounder(g, "A", "B")
    g.add_edge("Z", "B")
    assert has_confounder(g, "A", "B")
    deep = parse_edge_list("Z -> U, U -> A, Z -> W, W -> B")   # a common cause two steps up still counts
    assert has_confounder(deep, "A", "B")


def test_holds_in_every_member():
    a, b = parse_edge_list("A -> B"), parse_edge_list("B -> A")
    assert holds_in_every("parent", [a], "A", "B")
    assert not holds_in_every("parent", [a, b], "A", "B")
    assert not holds_in_every("parent", [], "A", "B")


def test_bad_relation_or_variable():
    g = parse_edge_list("A -> B")
    with pytest.raises(ValueError, match="unknown relation"):
        holds("sibling", g, "A", "B")
    with pytest.raises(UnknownVariableError):
        holds("parent", g, "A", "Q")


@settings(max_examples=60, deadline=None)
@given(dags())
def test_relation_identities(g):
    nodes = sorted(g.nodes)
    for x in nodes:
        for y in nodes:
            if x == y:
                continue
            assert holds("parent", g, x, y) == holds("child", g, y, x)
            assert holds("non-parent ancestor", g, x, y) == holds("non-child descendant", g, y, x)
            assert has_collider(g, x, y) == has_collider(g, y, x)
            assert has_confounder(g, x, y) == has_confounder(g, y, x)
            assert not has_collider(g, x, y) or has_common_descendant(g, x, y)
            assert not has_confounder(g, x, y) or has_common_ancestor(g, x, y)
            assert not is_indirect_cause(g, x, y) or holds("non-parent ancestor", g, x, y)
    assert len(RELATIONS) == 6
