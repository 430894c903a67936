"""`clm causal solve|generate` through typer's CliRunner: summaries, per-row errors, bad options."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from clmkit.causal.cli import GENERATORS, SOLVERS, causal_app

runner = CliRunner()

GOOD_QUESTION = "Would Lumbo occur if not Ziklo instead of Ziklo?"
GOOD_RULES = "We know that Ziklo causes Blaf, Blaf causes Lumbo."


def run(*args):
    return runner.invoke(causal_app, [str(a) for a in args])


def summary_of(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_unknown_task_is_a_clean_usage_error(tmp_path):
    for command in (["solve", "--task", "sudoku", "--input", tmp_path / "x.jsonl", "--output", tmp_path / "o.jsonl"],
                    ["generate", "--task", "sudoku", "--n", "2"]):
        result = run(*command)
        assert result.exit_code == 2
        assert "unknown task 'sudoku'" in result.output and "corr2cause" in result.output
        assert "Traceback" not in result.output


def test_missing_input_file_is_a_clean_error(tmp_path):
    result = run("solve", "--task", "counterbench", "--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o.jsonl")
    assert result.exit_code == 2 and "no such file" in result.output


def test_malformed_rows_are_recorded_and_the_run_continues(tmp_path):
    lines = [
        json.dumps({"question": GOOD_QUESTION, "given_info": GOOD_RULES, "answer": "no"}),
        "{this is not json",
        json.dumps({"question": GOOD_QUESTION}),                                         # no given_info
        json.dumps({"question": "Would it rain?", "given_info": GOOD_RULES, "answer": "yes"}),  # unparsed
        json.dumps(["a", "list"]),
        json.dumps({"question": GOOD_QUESTION, "given_info": GOOD_RULES, "answer": "maybe"}),   # bad gold label
        json.dumps({"question": GOOD_QUESTION, "given_info": GOOD_RULES}),                # unlabelled
    ]
    source, out = tmp_path / "rows.jsonl", tmp_path / "preds.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run("solve", "--task", "counterbench", "--input", source, "--output", out)
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["rows"] == 7 and summary["status"] == {"ok": 2, "error": 4, "unparsed": 1}
    assert summary["labelled"] == 2 and summary["correct"] == 1 and summary["accuracy"] == 0.5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(7))
    assert records[0] == {"index": 0, "prediction": "no", "status": "ok", "detail": records[0]["detail"], "gold": "no", "correct": True}
    assert records[1]["status"] == "error" and "not JSON" in records[1]["detail"]
    assert records[2]["status"] == "error" and "given_info" in records[2]["detail"]
    assert records[3]["status"] == "unparsed" and records[3]["prediction"] is None and records[3]["correct"] is False
    assert "gold" not in records[6] and records[6]["prediction"] == "no"


def test_a_solver_crash_on_one_row_is_recorded(tmp_path, monkeypatch):
    from clmkit.causal import cli

    def fragile(row):
        if row["question"] == "boom":
            raise RuntimeError("solver bug")
        return cli.solve_counterbench(row["question"], row["given_info"])

    monkeypatch.setitem(cli.SOLVERS, "counterbench", cli.SolveTask(solve=fragile, gold=cli.SOLVERS["counterbench"].gold))
    source, out = tmp_path / "rows.jsonl", tmp_path / "preds.jsonl"
    source.write_text(json.dumps({"question": "boom", "given_info": GOOD_RULES}) + "\n"
                      + json.dumps({"question": GOOD_QUESTION, "given_info": GOOD_RULES, "answer": "no"}) + "\n")
    result = run("solve", "--task", "counterbench", "--input", source, "--output", out)
    assert result.exit_code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["status"] == "error" and "RuntimeError: solver bug" in records[0]["detail"]
    assert records[1]["correct"] is True and summary_of(result)["accuracy"] == 1.0


def test_unlabelled_corr2cause_csv_gives_no_accuracy(tmp_path):
    source, out = tmp_path / "c2c.csv", tmp_path / "preds.jsonl"
    with open(source, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["input"])
        writer.writeheader()
        writer.writerow({"input": "Premise: Suppose there is a closed system of 2 variables, A and B. All the statistical "
                                  "relations among these 2 variables are as follows: A correlates with B.\nHypothesis: A directly causes B."})
    result = run("solve", "--task", "corr2cause", "--input", source, "--output", out)
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["labelled"] == 0 and "accuracy" not in summary
    assert json.loads(out.read_text())["prediction"] == "no"


@pytest.mark.parametrize("task", sorted(GENERATORS))
def test_generate_then_solve_round_trip(task, tmp_path):
    suffix = ".csv" if task == "corr2cause" else ".jsonl"
    generated, preds = tmp_path / f"gen{suffix}", tmp_path / "preds.jsonl"
    result = run("generate", "--task", task, "--n", 6, "--seed", 4, "--output", generated)
    assert result.exit_code == 0, result.output
    again = run("generate", "--task", task, "--n", 6, "--seed", 4)
    assert again.exit_code == 0
    assert again.stdout.replace("\r\n", "\n") == generated.read_text(encoding="utf-8").replace("\r\n", "\n")
    solved = run("solve", "--task", task, "--input", generated, "--output", preds)
    assert solved.exit_code == 0, solved.output
    summary = summary_of(solved)
    assert summary["rows"] == 6 and summary["accuracy"] == 1.0


def test_generate_rejects_a_non_positive_count():
    result = run("generate", "--task", "axiomatic", "--n", 0)
    assert result.exit_code == 2


def test_registry_covers_the_documented_tasks():
    assert {"corr2cause", "counterbench"} <= set(SOLVERS) and {"corr2cause", "counterbench", "axiomatic"} <= set(GENERATORS)
