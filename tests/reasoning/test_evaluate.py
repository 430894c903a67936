"""The evaluator: write-as-you-go JSONL, resume, per-row errors, metrics, and the reports."""

from __future__ import annotations

import json

import pytest

from clmkit.reasoning.evaluate import collect, markdown_table, metrics, predictions_path, read_records, run, select, write_report
from clmkit.reasoning.lm import FakeModel
from clmkit.tasks.base import TaskItem


def items(n: int = 6) -> list[TaskItem]:
    return [TaskItem(f"i{k}", f"Question {k}?", "yes" if k % 2 == 0 else "no", ["yes", "no"],
                     {"answer_format": "yes/no", "task": "toy", "rung": 1 + k % 3, "template": "t" + str(k % 2)})
            for k in range(n)]


class Interrupting(FakeModel):
    """Answers "yes" until call `stop_at`, then raises KeyboardInterrupt (a Ctrl-C mid-run)."""

    def __init__(self, stop_at: int):
        super().__init__(["yes"])
        self.stop_at = stop_at

    def complete(self, prompt, *, max_new_tokens, stop=None):
        if len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().complete(prompt, max_new_tokens=max_new_tokens, stop=stop)


def test_predictions_are_written_as_they_are_made_and_resume(tmp_path):
    path = tmp_path / "toy__direct__fake.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(items(), Interrupting(stop_at=4), "direct", path, task="toy")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["i0", "i1", "i2"]  # the three finished rows survived
    model = FakeModel(["no"])
    records = run(items(), model, "direct", path, task="toy")
    assert len(model.calls) == 3  # only the rest was asked
    assert [r["id"] for r in records] == [f"i{k}" for k in range(6)]
    assert [r["prediction"] for r in records] == ["yes"] * 3 + ["no"] * 3


def test_torn_last_line_and_retried_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "i0", "error": "EndpointError: timed out", "score": 0.0}) + "\n" + '{"id": "i1", "pred')
    records = run(items(2), FakeModel(["yes"]), "direct", path)
    assert [r["id"] for r in records] == ["i0", "i1"] and all(r["error"] is None for r in records)
    assert [r["id"] for r in read_records(path)] == ["i0", "i1"]  # the retry replaced the error


def test_a_failing_row_is_recorded_and_the_run_goes_on(tmp_path):
    def reply(prompt):
        if "Question 2?" in prompt:
            raise RuntimeError("the model fell over")
        return "maybe" if "Question 3?" in prompt else "yes"

    records = run(items(5), FakeModel(reply), "direct", tmp_path / "p.jsonl")
    assert len(records) == 5
    assert records[2]["error"] == "RuntimeError: the model fell over" and records[2]["score"] == 0.0
    assert records[3]["unparsed"] and records[3]["prediction"] is None
    m = metrics(records)
    assert (m["n"], m["correct"], m["errors"], m["unparsed"]) == (5, 2, 1, 1)


def test_metrics_f1_and_breakdowns():
    recs = [{"id": str(k), "gold": g, "prediction": p, "score": float(g == p), "unparsed": p is None, "error": None,
             "meta": {"template": t}} for k, (g, p, t) in enumerate(
        [("yes", "yes", "a"), ("yes", "no", "a"), ("no", "yes", "b"), ("no", "no", "b"), ("no", None, "b")])]
    m = metrics(recs)
    assert m["accuracy"] == pytest.approx(2 / 5) and m["unparsed"] == 1
    assert m["f1_yes"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert m["breakdown"]["template"]["a"]["accuracy"] == 0.5 and m["breakdown"]["template"]["b"]["n"] == 3


def test_select_spreads_the_sample():
    picked = select(items(10), 3)
    assert [i.id for i in picked] == ["i0", "i3", "i6"]
    assert len(select(items(4), None)) == 4 and len(select(items(4), 10)) == 4


def test_reports(tmp_path):
    for strategy in ("direct", "cot"):
        run(items(), FakeModel(["yes"]), strategy, predictions_path(tmp_path, "toy", strategy, "fake"),
            task="toy")
    paths = write_report(tmp_path)
    runs = json.loads(paths["json"].read_text())
    assert set(runs) == {"toy/direct/fake", "toy/cot/fake"}
    assert runs["toy/direct/fake"]["accuracy"] == 0.5
    assert "| toy | direct | fake | 6 | 0.500 |" in paths["markdown"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown_table(collect(tmp_path)).count("\n") == 4
