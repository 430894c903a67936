"""The PINE position-bias measurement: option layouts (listed options, CLadder's unlisted yes/no),
gold indices, and an end-to-end run on a tiny model (PINE's content scores cannot depend on order)."""

from __future__ import annotations

import json

import pytest

from clmkit.errors import InputError
from clmkit.prompting import experiments
from clmkit.prompting.experiments import Records, gold_index, option_layout, position_bias, recall, spread_first
from clmkit.tasks.base import TaskItem
from tests.conftest import loaded_text_model

COLD_LIKE = TaskItem("c1", "Which is the cause of 'the cake rises'?\nA. bake it.\nB. buy flour.\nAnswer:", 0,
                     ["bake it.", "buy flour."], {"answer_format": "choice"})
CLADDER_LIKE = TaskItem("y1", "Husband sets the alarm. Is ringing alarm more likely than silent alarm?", "no",
                        ["yes", "no"], {"answer_format": "yes/no"})


def test_listed_options_are_cut_out_of_the_prompt():
    prefix, labels, suffix = option_layout(COLD_LIKE)
    assert prefix == "Which is the cause of 'the cake rises'?\n"
    assert labels == ["A", "B"] and suffix == "Answer:"


def test_unlisted_yes_no_options_are_appended_so_they_can_move():
    prefix, labels, suffix = option_layout(CLADDER_LIKE)
    assert prefix.startswith(CLADDER_LIKE.prompt) and prefix.endswith("(A or B).\n")
    assert labels == ["A", "B"] and suffix == "Answer:"
    assert gold_index(CLADDER_LIKE) == 1 and gold_index(COLD_LIKE) == 0


def test_partly_listed_options_are_an_error():
    item = TaskItem("p1", "Pick.\nA. bake it.\nB. buy sugar.\nAnswer:", 0, ["bake it.", "buy flour."])
    with pytest.raises(InputError, match="does not list its options"):
        option_layout(item)


def test_position_bias_end_to_end_and_resumes(tiny_llama, tmp_path, monkeypatch):
    items = [CLADDER_LIKE, TaskItem("y2", "Is the sky green at noon?", "no", ["yes", "no"]),
             TaskItem("y3", "Does water boil at 100 C at sea level?", "yes", ["yes", "no"])]
    monkeypatch.setattr("clmkit.tasks.registry.load_task", lambda name: items)
    summary = position_bias(tiny_llama, "toy", None, tmp_path, score="content")
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["pine"]["n"] == 3 and rows["pine"]["orders"] == 2
    # content scores under PINE do not depend on the option order: same pick in both orders, no spread
    assert rows["pine"]["consistency"] == 1.0 and rows["pine"]["spread"] == 0.0
    records = [json.loads(line) for line in (tmp_path / "position__toy__content__tiny-llama.jsonl").open()]
    assert len(records) == 6 and {r["gold"] for r in records} == {0, 1}
    monkeypatch.setattr(experiments, "_choose", lambda *a, **k: pytest.fail("a rerun must read the records"))
    assert position_bias(tiny_llama, "toy", None, tmp_path, score="content")["rows"] == summary["rows"]
    # --done-only: a longer selection is summarized over its finished items, nothing is computed
    items.append(TaskItem("y4", "Is ice cold?", "yes", ["yes", "no"]))
    assert position_bias(tiny_llama, "toy", None, tmp_path, score="content", done_only=True)["rows"] == summary["rows"]
    with pytest.raises(InputError, match="done-only"):
        position_bias(tiny_llama, "toy", None, tmp_path / "empty", score="content", done_only=True)


@pytest.mark.parametrize("n", [1, 2, 10, 16])
def test_spread_first_is_a_permutation_whose_prefixes_spread(n):
    order = spread_first(list(range(n)))
    assert sorted(order) == list(range(n))
    if n == 16:
        assert order[:4] == [0, 8, 4, 12]
    if n == 10:
        assert max(order[:2]) >= 5  # the second item already comes from the second half


def test_recall_pairs_plain_with_jrt_and_summarizes_an_interrupted_run(tiny_llama, tmp_path):
    summary = recall(tiny_llama, 3, 1, tmp_path)  # one pair: the tiny model has a 256-token context
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["plain"]["n"] == rows["jrt"]["n"] == 3
    assert rows["jrt"]["prompt_tokens"] > 1.8 * rows["plain"]["prompt_tokens"]  # the input is read twice
    paired = summary["paired_jrt_vs_plain"]["kv-recall"]
    assert paired["both"] + paired["a_only"] + paired["b_only"] + paired["neither"] == 3
    # a longer run over the same seed starts with the same items: --done-only summarizes the three
    assert recall(tiny_llama, 8, 1, tmp_path, done_only=True)["rows"][0]["n"] == 3


def test_figure_draws_what_it_finds(tmp_path):
    from clmkit.prompting.figure import draw

    position = {"file": "position__cold__content__m.summary.json", "task": "cold", "score": "content", "orders": [[0, 1]],
                "model": "m", "rows": [{"method": m, "n": 10, "consistency": c, "consistency_ci95": [c - 0.1, c]}
                                       for m, c in (("plain", 0.8), ("pine", 1.0))]}
    draw([position], tmp_path / "fig.png")  # the other three panels say they found nothing
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    code = [{"file": f"humaneval__{m}.summary.json", "dataset": "humaneval", "model": m, "n": 4,
             "rows": [{"strategy": s, "pass@1": 0.5, "ci95": [0.2, 0.8]} for s in ("plain", "secot")]}
            for m in ("m", "coder")]  # two models' code runs: one group each
    draw([position, *code], tmp_path / "fig2.png")
    assert (tmp_path / "fig2.png").stat().st_size > 10_000


def test_records_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "v": 1}\n{"key": "b", "v"')  # killed mid-write
    records = Records(path)
    assert set(records.rows) == {"a"}
    records.get_or_make("b", lambda: {"v": 2})
    assert Records(path).rows["b"]["v"] == 2 and Records(path).rows["a"]["v"] == 1


def test_code_pass_at_1_batched_equals_the_serial_run(tiny_llama, tmp_path, monkeypatch):
    import clmkit.prompting.secot as secot
    import clmkit.reasoning.batch as batch
    import clmkit.tasks.code as code
    from clmkit.prompting.experiments import code_pass_at_1

    problems = [TaskItem(f"mbpp-{k}", f"f{k}", None,
                         {"dataset": "mbpp", "test_list": [f"assert f{k}() == {k}"], "test_imports": []})
                for k in range(5)]
    monkeypatch.setattr(code, "load_code", lambda name: problems)
    # the tiny model has a 256-token context: one short worked example, short budgets
    monkeypatch.setattr(secot, "EXAMPLES", [{"requirement": "g", "data_flow": "-", "control_flow": "-", "code": "g"}])
    monkeypatch.setattr(secot, "SEMANTICS_TOKENS", 6)
    made, original = [], batch.BatchedModel
    monkeypatch.setattr(batch, "BatchedModel", lambda *a: made.append(original(*a)) or made[-1])
    model, strategies = loaded_text_model(tiny_llama), ["plain", "cot", "secot"]
    serial = code_pass_at_1(model, "mbpp", strategies, None, tmp_path / "serial", code_tokens=10)
    together = code_pass_at_1(model, "mbpp", strategies, None, tmp_path / "batched", batch_size=4, code_tokens=10)
    assert made and max(made[0].rows_per_step) > 1  # really decoded together
    rows = lambda d: {r["key"]: (r["code"], r["status"], r["steps"]) for r in experiments.Records(  # noqa: E731
        d / "mbpp__tiny-llama.jsonl").rows.values()}
    assert len(rows(tmp_path / "serial")) == 15 and rows(tmp_path / "serial") == rows(tmp_path / "batched")
    assert [r["pass@1"] for r in serial["rows"]] == [r["pass@1"] for r in together["rows"]]
    assert together["batch_sizes"] == [4] and serial["batch_sizes"] == [1] and together["n"] == 5
    # a rerun resumes with the file's budget; another budget into the same file is refused
    assert code_pass_at_1(model, "mbpp", strategies, None, tmp_path / "serial")["code_tokens"] == 10
    with pytest.raises(InputError, match="--code-tokens 10 or another --output-dir"):
        code_pass_at_1(model, "mbpp", strategies, None, tmp_path / "serial", code_tokens=12)
