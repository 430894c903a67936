"""A smoke run of every experiment (tiny model, a few steps): it trains, every variant's loss goes
down, and it writes results.json + plots. Full runs are benchmarks (docs/lab.md), not tests."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from clmkit.lab.experiments import Context, available, run_experiment

EXPERIMENTS = ["lexinvariant", "cm3", "codegen2-infill", "mask-removal", "ftp", "arch-objective", "encdec-vs-dec"]


def test_registry_lists_every_experiment():
    assert set(EXPERIMENTS) <= set(available())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_run(name, tmp_path):
    ctx = Context(scale=0.01, output=tmp_path, progress=False, tiny=True)
    record = run_experiment(name, ctx, command=f"test {name}")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        head, tail = losses[: max(1, len(losses) // 4)], losses[-max(1, len(losses) // 4):]
        assert sum(tail) / len(tail) < sum(head) / len(head), f"{name}/{variant}: loss did not decrease: {losses}"
    assert record["rows"] and all("variant" in r for r in record["rows"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiment"] == name and saved["command"] == f"test {name}"
    assert (tmp_path / "curves.png").stat().st_size > 1000 and (tmp_path / f"{name}.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints").is_dir()
    if name == "cm3":  # `clm lab show` renders the same rows
        from clmkit.cli import app

        shown = CliRunner().invoke(app, ["lab", "show", str(tmp_path / "results.json"), "--markdown"])
        assert shown.exit_code == 0 and shown.output.startswith("| variant |") and "| CM3 |" in shown.output


def test_cli_list_and_bad_input(tmp_path):
    from clmkit.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["lab", "list"])
    assert listed.exit_code == 0 and "cm3" in listed.output and "lexinvariant" in listed.output
    for args, message in ((["lab", "run", "nope"], "unknown experiment"),
                          (["lab", "run", "cm3", "--scale", "0"], "--scale must be > 0"),
                          (["lab", "run", "cm3", "--size", "huge"], "--size must be one of"),
                          (["lab", "run", "cm3", "--device", "cuda:7"], "--device"),
                          (["lab", "run", "cm3", "--device", "toaster"], "--device")):
        r = runner.invoke(app, [*args, "--output", str(tmp_path)])
        assert r.exit_code == 2, r.output
        assert message in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = runner.invoke(app, ["lab", "show", str(bad)])
    assert r.exit_code == 2 and "not a lab results.json" in r.output
