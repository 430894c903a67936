"""`clm eval causal --strategy solver`: the exact engine alone — no LM loaded, none named."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from clmkit.cli import app

runner = CliRunner()


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to build or load a language model fails the test."""
    import clmkit.models
    import clmkit.reasoning.lm

    def refuse(*args, **kwargs):
        raise AssertionError("--strategy solver loaded a language model")

    monkeypatch.setattr(clmkit.reasoning.lm, "make_model", refuse)
    monkeypatch.setattr(clmkit.reasoning.lm.ClmkitModel, "__init__", refuse)
    monkeypatch.setattr(clmkit.models, "load", refuse)


def test_solver_loads_no_model_and_names_none(no_model_loading, tmp_path):
    # the default --model (smollm2-135m) and an explicit one are both ignored
    for extra in ([], ["--model", "openai:gpt-4o-mini"]):
        result = runner.invoke(app, ["eval", "causal", "--task", "axiomatic", "--strategy", "solver", "--limit", "20",
                                     "-o", str(tmp_path), *extra])
        assert result.exit_code == 0, result.output
        assert "smollm2" not in result.output and "gpt-4o" not in result.output
    outputs = {p.name: p.read_text() for p in tmp_path.iterdir() if p.suffix in (".jsonl", ".json", ".md")}
    assert "axiomatic__solver__no-model.jsonl" in outputs
    assert not any("smollm2" in name or "gpt-4o" in name for name in outputs)
    assert not any("smollm2" in text or "gpt-4o" in text for text in outputs.values())
    records = [json.loads(line) for line in outputs["axiomatic__solver__no-model.jsonl"].splitlines()]
    assert len(records) == 20 and all(r["model"] == "no-model" and r["score"] == 1.0 for r in records)
