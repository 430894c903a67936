"""End to end on the real model: `clm eval causal` through `clm serve` predicts what it predicts in-process."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.server.conftest import serving


def predictions(folder):
    [path] = folder.glob("*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["id"]: (r["prediction"], r["output"], r["error"]) for r in rows}


@pytest.mark.embedded
def test_eval_causal_through_the_server_matches_in_process(embedded_model, tmp_path, monkeypatch):
    from clmkit.cli import app
    from clmkit.data import data_path

    try:
        data_path("cladder", "cladder_public.csv")
    except FileNotFoundError as e:
        pytest.skip(f"real benchmark data not available ({e}); set CLMKIT_DATA to the shared/data folder")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["eval", "causal", "--task", "cladder", "--limit", "2", "--strategy", "direct"]
    with serving(embedded_model) as s:
        served = CliRunner().invoke(app, [*args, "--model", "openai:smollm2-135m", "--base-url", s.url + "/v1",
                                          "-o", str(tmp_path / "served")])
    assert served.exit_code == 0, served.output
    local = CliRunner().invoke(app, [*args, "--model", "smollm2-135m", "-o", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    got, want = predictions(tmp_path / "served"), predictions(tmp_path / "local")
    assert len(got) == 2 and all(error is None for _, _, error in got.values())
    assert got == want
