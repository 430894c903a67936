"""Intervals, wall time and the strategy x task table of the full-table reports."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from clmkit.reasoning.cli import register
from clmkit.reasoning.evaluate import metrics, pivot_markdown, wall_seconds, wilson


def test_wilson_matches_the_textbook_values():
    # Wilson score interval, z = 1.96 (e.g. Newcombe 1998, table I: 0/10 -> 0.0000-0.2775, 5/10 -> 0.2366-0.7634)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wall_time_counts_overlaps_once_and_skips_pauses():
    records = [{"started": 0.0, "finished": 4.0}, {"started": 1.0, "finished": 5.0},  # batched: overlap
               {"started": 100.0, "finished": 102.0}]  # resumed later: the pause is not counted
    assert wall_seconds(records) == pytest.approx(7.0)
    assert wall_seconds([{"seconds": 1.5}, {"seconds": 2.0}]) == pytest.approx(3.5)  # old records: the sum


def record(i, gold, prediction, unparsed=False):
    return {"id": str(i), "gold": gold, "prediction": prediction, "score": float(gold == prediction),
            "unparsed": unparsed, "error": None, "meta": {}, "started": float(i), "finished": i + 1.0}


def test_pivot_table_cells():
    lm = [record(i, "yes", "yes" if i < 3 else "no") for i in range(4)]
    solver = [record(i, "yes", None, unparsed=True) for i in range(5)]
    runs = {"t/direct/m": {"task": "t", "strategy": "direct", "model": "m", **metrics(lm)},
            "u/direct/m": {"task": "u", "strategy": "direct", "model": "m", **metrics(lm)},
            "t/solver/no-model": {"task": "t", "strategy": "solver", "model": "no-model", **metrics(solver)}}
    table = pivot_markdown(runs)
    low, high = wilson(3, 4)
    assert f"| direct | 0.750 ({low:.2f}–{high:.2f}); F1 0.857; n=4, 4 s |" in table
    assert "| solver | no answer (all 5 unparsed) | not run |" in table


def test_cli_rejects_a_bad_batch_size(tmp_path):
    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["causal", "--task", "axiomatic", "--model", "fake", "--batch-size", "0",
                                      "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--batch-size must be >= 1" in result.output
