"""Intervals and paired tests behind the docs/prompting.md tables, against hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from clmkit.prompting.stats import bootstrap_ci, mcnemar_p, mean_ci, paired_binary, paired_diff


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)  # all six discordant items one way: 2 * 0.5**6
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2**10
    assert mcnemar_p(3, 7) == mcnemar_p(7, 3)


def test_paired_binary_counts():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert paired_binary(a, b) == {"n": 5, "both": 1, "a_only": 2, "b_only": 1, "neither": 1,
                                   "mcnemar_p": 1.0}
    with pytest.raises(ValueError):
        paired_binary(a, b[:3])


def test_mean_ci_and_paired_diff():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 1.96 * math.sqrt(5 / 3) / 2
    assert ci["mean"] == 2.5 and ci["ci95"] == [round(2.5 - half, 4), round(2.5 + half, 4)]
    d = paired_diff([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    assert d["mean_diff"] == pytest.approx(-1.0) and d["a_lower"] == 2 and d["n"] == 3


def test_bootstrap_is_seeded_and_brackets_the_statistic():
    rng = random.Random(1)
    rows = [rng.random() < 0.3 for _ in range(200)]
    share = lambda rs: sum(rs) / len(rs)
    low, high = bootstrap_ci(rows, share)
    assert bootstrap_ci(rows, share) == [low, high]
    assert low < share(rows) < high and 0.05 < high - low < 0.2  # ~ 2 * 1.96 * sqrt(.3 * .7 / 200) = 0.127
    assert bootstrap_ci([True] * 50, share) == [1.0, 1.0]  # negative control: no variation, no width
