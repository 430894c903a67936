"""`clm eval causal` through typer's CliRunner (no real model)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from clmkit.reasoning.cli import eval_causal, register

app = typer.Typer()
register(app)
app.command("other")(lambda: None)  # a second command, so "causal" is a subcommand as under `clm eval`
runner = CliRunner()


def test_unknown_task_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["causal", "--task", "nope", "--model", "fake", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown task 'nope'" in result.output and "Traceback" not in result.output


def test_unknown_strategy_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["causal", "--task", "cladder", "--strategy", "magic", "--model", "fake", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown strategy 'magic'" in result.output and "Traceback" not in result.output


def test_bad_limit_and_base_url(tmp_path):
    assert runner.invoke(app, ["causal", "--task", "axiomatic", "--limit", "0", "-o", str(tmp_path)]).exit_code == 2
    result = runner.invoke(app, ["causal", "--task", "axiomatic", "--model", "openai:x", "--base-url", "ftp://x",
                                 "-o", str(tmp_path)])
    assert result.exit_code == 2 and "http" in result.output


def test_a_fake_run_writes_predictions_and_reports(tmp_path):
    result = runner.invoke(app, ["causal", "--task", "axiomatic", "--model", "fake:yes", "--strategy", "direct",
                                 "--limit", "10", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "axiomatic__direct__fake.jsonl").read_text().splitlines()
    assert len(lines) == 10 and all(json.loads(line)["prediction"] == "yes" for line in lines)
    assert {p.name for p in tmp_path.iterdir()} >= {"summary.json", "summary.md", "summary.png"}
    assert "accuracy" in result.output


def test_eval_causal_is_a_plain_function():
    assert callable(eval_causal)
