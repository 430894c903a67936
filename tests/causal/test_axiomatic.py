"""Axiomatic-training transitivity items: settings, determinism, and exact answers."""

from __future__ import annotations

from collections import Counter

import pytest

from clmkit.causal.solve import solve_axiomatic
from clmkit.tasks import axiomatic


def edges_of(premise: str) -> list[tuple[str, str]]:
    return [tuple(s.split(" causes ")) for s in premise.rstrip(".").split(". ")]


def test_settings_follow_the_paper():
    items = axiomatic.generate(100, seed=3)
    assert Counter(i.meta["setting"] for i in items) == {s: 20 for s in axiomatic.SETTINGS}
    assert Counter(i.answer for i in items) == {"yes": 50, "no": 50}
    for item in items:
        edges, setting, n = edges_of(item.meta["premise"]), item.meta["setting"], item.meta["num_nodes"]
        assert item.prompt == f"{item.meta['premise']} {item.meta['question']}"
        if setting in ("chain", "long_chain", "reversed"):
            shown = edges[::-1] if setting == "reversed" else edges
            assert all(a[1] == b[0] for a, b in zip(shown, shown[1:]))   # a sequential chain, in (reversed) order
            assert (3 <= n <= 6) if setting != "long_chain" else (7 <= n <= 15)
        if setting == "flipped":
            assert 7 <= n <= 15 and len(edges) == n - 1
        if setting == "branching":
            assert 5 <= n <= 12 and len(edges) == min(round(item.meta["branching_factor"] * n), n * (n - 1) // 2)
        assert all(1 <= len(v) <= 3 for e in edges for v in e)


def test_reproducible_and_exactly_answerable():
    items = axiomatic.generate(50, seed=9)
    assert [i.prompt for i in items] == [i.prompt for i in axiomatic.generate(50, seed=9)]
    for item in items:
        solution = solve_axiomatic(item.prompt)
        assert (solution.status, solution.prediction) == ("ok", item.answer)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown axiomatic setting"):
        axiomatic.generate(3, settings=("spiral",))
    assert solve_axiomatic("A causes B. B causes A. Does A cause B?").status == "inconsistent"
    assert solve_axiomatic("A causes B. Does A cause Q?").status == "unparsed"
    assert solve_axiomatic("A makes B. Does A cause B?").status == "unparsed"
    assert solve_axiomatic("A causes B.").status == "unparsed"
    assert solve_axiomatic("x1 causes Y. Y causes z. Does x1 cause z?").prediction == "yes"
