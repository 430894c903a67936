"""`--ray`: items fanned out over a (local, 2-CPU) Ray cluster give the serial run's records."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray", reason="the Ray tests need the optional extra: pip install 'clmkit[ray]'")

from typer.testing import CliRunner  # noqa: E402

from clmkit.reasoning.distributed import ModelSpec, ray_executor  # noqa: E402
from clmkit.reasoning.evaluate import read_records, run  # noqa: E402
from clmkit.reasoning.lm import make_model  # noqa: E402
from clmkit.tasks.axiomatic import generate  # noqa: E402

SAME = ("id", "gold", "prediction", "score", "unparsed", "error", "output", "steps", "task", "strategy", "model")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: Ray's start-up costs seconds."""
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception:  # noqa: BLE001 — Ray gives its raylet a fixed 30 s to register; on a loaded machine retry once
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def comparable(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: {k: r.get(k) for k in SAME} for r in records}


@pytest.mark.parametrize("strategy,spec", [("solver", "fake"), ("direct", "fake:no")])
def test_ray_run_equals_the_serial_run(cluster, tmp_path, strategy, spec):
    items = generate(12, seed=3)
    serial = run(items, make_model(spec), strategy, tmp_path / "serial.jsonl", task="axiomatic")
    executor = ray_executor(ModelSpec(spec), strategy, workers=2, batch_size=3)
    remote = run(items, None, strategy, tmp_path / "ray.jsonl", task="axiomatic", executor=executor,
                 model_name=make_model(spec).name)
    assert comparable(remote) == comparable(serial)
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 12


def test_ray_run_resumes_the_same_jsonl(cluster, tmp_path):
    items = generate(8, seed=5)
    path = tmp_path / "p.jsonl"
    serial = run(items, make_model("fake"), "solver", tmp_path / "serial.jsonl", task="axiomatic")
    path.write_text("".join(json.dumps(r) + "\n" for r in serial[:3]))  # an interrupted run
    executor = ray_executor(ModelSpec("fake"), "solver", workers=2)
    records = run(items, None, "solver", path, task="axiomatic", executor=executor, model_name="fake")
    assert len(path.read_text().splitlines()) == 8  # only the five missing rows were added
    assert comparable(records) == comparable(serial) == comparable(read_records(path))


def test_cli_ray(cluster, tmp_path):
    import typer

    from clmkit.reasoning.cli import register

    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)
    runner = CliRunner()
    args = ["causal", "--task", "axiomatic", "--model", "fake:yes", "--limit", "6", "-o", str(tmp_path)]
    result = runner.invoke(app, args + ["--ray", "local", "--ray-workers", "2"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "axiomatic__direct__yes.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {json.loads(line)["prediction"] for line in lines} == {"yes"}
    bad = runner.invoke(app, args + ["--ray", "local", "--ray-workers", "0"])
    assert bad.exit_code == 2 and "--ray-workers must be >= 1" in bad.output
