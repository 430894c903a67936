"""Intervals and paired comparisons for the prompting measurements (docs/prompting.md).

    mean_ci([1.2, 1.5, ...])                  # mean and its 95% interval (normal approximation)
    paired_binary(a_correct, b_correct)       # both / a only / b only / neither + exact McNemar p
    paired_diff(a_values, b_values)           # mean of a - b with its 95% interval, a < b on k/n items
    bootstrap_ci(rows, statistic)             # 95% percentile interval of any statistic over items

Every method in a run answers the same items, so paired statistics are the sharp ones: two
accuracies whose Wilson intervals overlap can still differ clearly item by item (and vice versa).
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Callable, Sequence

from clmkit.reasoning.evaluate import wilson

Z95 = 1.96


def mean_ci(values: Sequence[float]) -> dict:
    """Mean, sample SD and the 95% interval of the mean, mean ± 1.96·SD/√n (n ≥ 30 here, so the
    normal quantile is within 4% of Student's t)."""
    n = len(values)
    mean = statistics.fmean(values) if n else 0.0
    sd = statistics.stdev(values) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n) if n > 1 else math.inf
    return {"n": n, "mean": round(mean, 4), "sd": round(sd, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar test: under 'no difference' each discordant item is a fair coin."""
    k, n = min(a_only, b_only), a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_binary(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Item-by-item comparison of two methods' correctness on the same items."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} and {len(b)} items")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    both = sum(x and y for x, y in zip(a, b))
    return {"n": len(a), "both": both, "a_only": a_only, "b_only": b_only, "neither": len(a) - both - a_only - b_only,
            "mcnemar_p": round(mcnemar_p(a_only, b_only), 4)}


def paired_diff(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of a - b over items with its 95% interval, and on how many items a < b (Wilson)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} and {len(b)} items")
    diff = mean_ci([x - y for x, y in zip(a, b)])
    lower = sum(x < y for x, y in zip(a, b))
    return {"n": len(a), "mean_diff": diff["mean"], "diff_ci95": diff["ci95"], "a_lower": lower,
            "a_lower_ci95": [round(x, 3) for x in wilson(lower, len(a))]}


def bootstrap_ci(rows: Sequence, statistic: Callable[[Sequence], float], reps: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of `statistic(rows)`, resampling rows (items) with
    replacement; seeded, so a rerun reports the same interval."""
    rng = random.Random(seed)
    values = sorted(statistic([rows[rng.randrange(len(rows))] for _ in rows]) for _ in range(reps))
    return [round(values[int(0.025 * reps)], 4), round(values[min(reps - 1, int(0.975 * reps))], 4)]
