"""Bad input to the prompting commands: one clear line, exit status 2, before any model loads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from clmkit.cli import app


@pytest.mark.parametrize("args, message", [
    (["eval", "code", "--dataset", "nope"], "--dataset is one of humaneval, mbpp"),
    (["eval", "code", "--strategy", "magic"], "--strategy of plain, fewshot, cot, secot"),
    (["eval", "code", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "code", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["eval", "code", "--code-tokens", "0"], "--code-tokens must be >= 1"),
    (["eval", "recall", "--pairs", "0"], "--pairs must be >= 1"),
    (["eval", "position-bias", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "judge", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "compress", "--rate", "1.5"], "--rate must be in (0, 1]"),
    (["train", "compressor", "--epochs", "0"], "--epochs >= 1"),
    (["train", "compressor", "--source", "wiki"], "--source is one of gsm8k, summarization"),
    (["eval", "recall", "--backend", "nope", "--limit", "1"], "unknown backend 'nope'"),
    (["eval", "code", "--backend", "nope", "--limit", "1"], "unknown backend 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_commands_are_registered():
    result = CliRunner().invoke(app, ["eval", "--help"])
    for name in ("code", "recall", "position-bias", "judge", "compress"):
        assert name in result.output
    assert "compressor" in CliRunner().invoke(app, ["train", "--help"]).output


def test_done_only_without_records_is_one_line(tmp_path):
    from clmkit.data import data_path

    try:
        data_path("humaneval", "HumanEval.jsonl.gz")
    except FileNotFoundError:
        pytest.skip("HumanEval data not found (set CLMKIT_DATA)")
    result = CliRunner().invoke(app, ["eval", "code", "--limit", "2", "--done-only", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--done-only: no item of this selection is finished" in result.output
