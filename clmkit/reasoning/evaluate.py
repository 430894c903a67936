"""Run a strategy over a task's items, writing each prediction as it is made; then score and report.

    records = run(items, model, "cot", out / "cladder__cot__smollm2-135m.jsonl")
    records = run(items, model, "cot", path, executor=batched(model, "cot", 8))  # 8 items decoded together
    summary = metrics(records)                        # accuracy + 95% Wilson interval, F1, acc_norm, ...
    write_report(out)                                 # summary.json, summary.md, summary.png over all runs

One JSON line per item is appended and flushed before the next item starts, so an interrupted run
(Ctrl-C, crash, lost endpoint) keeps everything done so far, and running again resumes after the
last finished item. A row whose model call fails (endpoint timeout, garbage response) is recorded
with its error and counted wrong; the run goes on. An executor decides how the remaining items are
run — serially (default), batched on this machine (`batched`, reasoning/batch.py) or fanned out
over a Ray cluster (reasoning/distributed.py) — records are written in the order they finish.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from clmkit.errors import InputError
from clmkit.reasoning.answers import extract, grade
from clmkit.reasoning.batch import run_each
from clmkit.reasoning.lm import TextModel
from clmkit.reasoning.strategies import STRATEGIES
from clmkit.tasks.base import TaskItem

BREAKDOWN_KEYS = ("task", "template", "type", "rung", "query_type", "graph", "level", "activity", "setting",
                  "num_variables")
MAX_LOGGED_CHARS = 4000  # per model call in the JSONL trace
NO_MODEL = "no-model"  # the model name of `solver` runs (the exact engine, no LM)


def select(items: list[TaskItem], limit: int | None) -> list[TaskItem]:
    """`limit` items spread evenly over the list (so every sub-task / activity is sampled), in order."""
    if not limit or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def predictions_path(output_dir: Path, task: str, strategy: str, model_name: str) -> Path:
    return Path(output_dir) / f"{slug(task)}__{slug(strategy)}__{slug(model_name)}.jsonl"


def read_records(path: Path) -> list[dict]:
    """The records of a predictions file, the last one per item id (a retried row replaces its
    error); a torn last line (killed mid-write) is skipped."""
    if not Path(path).exists():
        return []
    by_id: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record:
                by_id.pop(record["id"], None)
                by_id[record["id"]] = record
    return list(by_id.values())


def _trimmed(steps: list[dict]) -> list[dict]:
    return [{k: (v[:MAX_LOGGED_CHARS] if isinstance(v, str) else v) for k, v in s.items()} for s in steps]


def run_item(model: TextModel, strategy: str, item: TaskItem) -> dict:
    """One record: the prediction and its grade, or the error that stopped this row."""
    started, wall_start = time.perf_counter(), time.time()
    record: dict[str, Any] = {"id": item.id, "gold": item.answer, "meta": item.meta}
    try:
        attempt = STRATEGIES[strategy](model, item)
        prediction = attempt.prediction if attempt.prediction is not None else extract(item, attempt.output)
        record.update(prediction=prediction, score=grade(item, prediction), unparsed=prediction is None,
                      error=None, output=attempt.output[:MAX_LOGGED_CHARS], steps=_trimmed(attempt.steps))
        if attempt.prediction_norm is not None:  # log-likelihood scoring: lm-eval's acc_norm as well
            record.update(prediction_norm=attempt.prediction_norm, score_norm=grade(item, attempt.prediction_norm))
    except Exception as e:  # noqa: BLE001 — one bad row (endpoint down, garbage) must not end the run
        record.update(prediction=None, score=0.0, unparsed=False, error=f"{type(e).__name__}: {e}", output="", steps=[])
    # seconds: this item's latency; [started, finished]: wall clock, so a cell's wall time counts
    # overlapping (batched, parallel) items once
    record.update(seconds=round(time.perf_counter() - started, 3), started=round(wall_start, 3),
                  finished=round(time.time(), 3))
    return record


Executor = Callable[[list[TaskItem]], Iterator[dict]]  # items -> their records, in the order they finish


def serial(model: TextModel, strategy: str) -> Executor:
    return lambda items: (run_item(model, strategy, item) for item in items)


def batched(model: TextModel, strategy: str, batch_size: int) -> Executor:
    """Items run on `batch_size` threads whose model calls are decoded as one batch (clmkit models)."""
    if strategy in ("direct-ll", "solver"):  # direct-ll scores an item in one forward already; solver has no LM
        return serial(model, strategy)
    return lambda items: run_each(items, model, lambda m, item: run_item(m, strategy, item), batch_size)


def run(items: Iterable[TaskItem], model: TextModel | None, strategy: str, path: Path, *, task: str = "",
        resume: bool = True, on_record=None, executor: Executor | None = None,
        model_name: str | None = None, backend: str | None = None) -> list[dict]:
    """Append one record per item to `path` (flushed each time); skip items already there if resuming.

    `executor` runs the items still to do (default: one after another with `model`); with a remote
    executor `model` may be None and `model_name` names it. `backend` (default: the model's) is
    recorded per row, and a resumed file must have been made on the same one."""
    if strategy not in STRATEGIES:
        raise KeyError(strategy)
    executor = executor or serial(model, strategy)
    model_name = model_name or getattr(model, "name", "?")
    backend = backend or getattr(model, "backend", None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_records(path) if resume else []
    other = {r.get("backend") for r in done} - {backend, None} if backend else set()
    if other:  # kernels round differently: one file, one backend
        raise InputError(f"{path} holds predictions made on the {', '.join(sorted(other))} backend, not {backend}; "
                         "use the same --backend, --restart, or another --output-dir")
    seen = {r["id"] for r in done if r.get("error") is None}  # rows that failed are tried again
    records = [r for r in done if r["id"] in seen]
    if resume and path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:  # a torn last line: start the next record on its own line
            f.write("\n")
    todo = []
    for item in items:
        if item.id in seen:
            if on_record:
                on_record(None)
        else:
            todo.append(item)
    task_of = {item.id: task or item.meta.get("task", "") for item in todo}
    with open(path, "a" if resume else "w", encoding="utf-8") as f:
        for record in executor(todo):
            record.update(task=task_of[record["id"]], strategy=strategy, model=model_name)
            if backend:
                record["backend"] = backend
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            records.append(record)
            if on_record:
                on_record(record)
    return records


def _f1_positive(records: list[dict]) -> float | None:
    """F1 of the "yes" class (Corr2Cause's metric); None when the task is not yes/no."""
    yes_no = [r for r in records if r.get("gold") in ("yes", "no")]
    if not yes_no:
        return None
    tp = sum(r["prediction"] == "yes" and r["gold"] == "yes" for r in yes_no)
    fp = sum(r["prediction"] == "yes" and r["gold"] == "no" for r in yes_no)
    fn = sum(r["prediction"] != "yes" and r["gold"] == "yes" for r in yes_no)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sound at 0, 1 and small n, unlike p ± z·se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def wall_seconds(records: list[dict]) -> float:
    """Wall time of a cell: the length of the union of the items' [started, finished] intervals
    (batched or parallel items overlap; a resumed run's pause is not counted)."""
    spans = sorted((r["started"], r["finished"]) for r in records if "started" in r and "finished" in r)
    total, end = 0.0, -math.inf
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    if not spans:  # records from before timestamps were kept: the sum of item times
        return float(sum(r.get("seconds", 0.0) for r in records))
    return total


def _basic(records: list[dict]) -> dict:
    n = len(records)
    score = sum(r["score"] for r in records)
    return {
        "n": n,
        "accuracy": score / n if n else 0.0,
        "accuracy_ci95": wilson(score, n),  # with fractional scores (ROUGE-L) an approximation
        "correct": sum(r["score"] == 1.0 for r in records),
        "unparsed": sum(bool(r.get("unparsed")) for r in records),
        "errors": sum(r.get("error") is not None for r in records),
    }


def metrics(records: list[dict]) -> dict:
    """Accuracy (mean score) with its 95% Wilson interval, F1 on the positive class, acc_norm for
    log-likelihood runs, unparsed and error counts, wall time, and breakdowns."""
    out = _basic(records)
    out["f1_yes"] = _f1_positive(records)
    # acc_norm where log-likelihood scored anything; an item it did not score (open-form, generated)
    # counts with its one prediction, so acc and acc_norm cover the same items
    any_norm = any("score_norm" in r for r in records)
    out["acc_norm"] = sum(r.get("score_norm", r["score"]) for r in records) / len(records) if any_norm else None
    out["wall_s"] = round(wall_seconds(records), 2)
    breakdown: dict[str, dict[str, dict]] = {}
    for key in BREAKDOWN_KEYS:
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            value = (r.get("meta") or {}).get(key)
            if value is not None:
                groups[str(value)].append(r)
        if len(groups) > 1 or (key == "task" and groups):
            breakdown[key] = {k: _basic(v) for k, v in sorted(groups.items())}
    out["breakdown"] = breakdown
    return out


# ---- reports over every run in a folder ---------------------------------------------------------


def collect(output_dir: Path) -> dict[str, dict]:
    """"task/strategy/model" -> metrics, for every predictions file in the folder."""
    runs = {}
    for path in sorted(Path(output_dir).glob("*__*__*.jsonl")):
        records = read_records(path)
        if not records:
            continue
        first = records[0]
        runs[f"{first.get('task')}/{first.get('strategy')}/{first.get('model')}"] = {
            "task": first.get("task"), "strategy": first.get("strategy"), "model": first.get("model"),
            "file": path.name, **metrics(records)}
    return runs


def markdown_table(runs: dict[str, dict]) -> str:
    lines = ["| task | strategy | model | n | accuracy | 95% CI | acc_norm | F1 (yes) | unparsed | errors | wall s |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for run in runs.values():
        f1 = "" if run["f1_yes"] is None else f"{run['f1_yes']:.3f}"
        norm = "" if run.get("acc_norm") is None else f"{run['acc_norm']:.3f}"
        low, high = run.get("accuracy_ci95", (0.0, 1.0))
        lines.append(f"| {run['task']} | {run['strategy']} | {run['model']} | {run['n']} | {run['accuracy']:.3f} | "
                     f"{low:.3f}–{high:.3f} | {norm} | {f1} | {run['unparsed']} | {run['errors']} | "
                     f"{run.get('wall_s', 0):.0f} |")
    return "\n".join(lines) + "\n"


def pivot_markdown(runs: dict[str, dict]) -> str:
    """Strategy x task: accuracy (95% Wilson interval), n and wall time per cell; acc_norm and F1 (yes)
    where they exist. One table per LM; the solver rows go in each."""
    tables = []
    for model in sorted({r["model"] for r in runs.values()} - {NO_MODEL}) or [NO_MODEL]:
        mine = [r for r in runs.values() if r["model"] in (model, NO_MODEL)]
        tasks = sorted({r["task"] for r in mine})
        lines = [f"| {model} | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for strategy in [s for s in STRATEGIES if any(r["strategy"] == s for r in mine)]:
            cells = {r["task"]: r for r in mine if r["strategy"] == strategy}
            row = []
            for task in tasks:
                r = cells.get(task)
                if r is None:
                    row.append("not run")
                    continue
                if r["n"] and r["unparsed"] == r["n"]:  # e.g. solver on a task it has no reader for
                    row.append(f"no answer (all {r['n']} unparsed)")
                    continue
                low, high = r["accuracy_ci95"]
                extra = "" if r.get("acc_norm") is None else f"; acc_norm {r['acc_norm']:.3f}"
                extra += "" if r.get("f1_yes") is None else f"; F1 {r['f1_yes']:.3f}"
                row.append(f"{r['accuracy']:.3f} ({low:.2f}–{high:.2f}){extra}; n={r['n']}, {r['wall_s']:.0f} s")
            lines.append(f"| {strategy} | " + " | ".join(row) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def plot(runs: dict[str, dict], path: Path) -> Path | None:
    """Strategy x task heatmap of accuracy (one panel per model), PNG via matplotlib's Agg backend."""
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one panel per LM; the solver rows (no LM) appear in every panel
    models = sorted({r["model"] for r in runs.values()} - {NO_MODEL}) or [NO_MODEL]
    tasks = sorted({r["task"] for r in runs.values()})
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs.values())]
    fig, axes = plt.subplots(1, len(models), figsize=(1.2 + 1.3 * len(tasks) * len(models), 1.2 + 0.7 * len(strategies)),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        grid = [[float("nan")] * len(tasks) for _ in strategies]
        counts = [[0] * len(tasks) for _ in strategies]
        for r in runs.values():
            if r["model"] in (model, NO_MODEL) and not (r["n"] and r["unparsed"] == r["n"]):  # no answer: blank
                i, j = strategies.index(r["strategy"]), tasks.index(r["task"])
                grid[i][j], counts[i][j] = r["accuracy"], r["n"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(strategies)), strategies)
        ax.set_title(model)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(j, i, f"{v:.2f}\nn={counts[i][j]}", ha="center", va="center",
                            color="white" if v < 0.6 else "black", fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(output_dir: Path) -> dict[str, Path]:
    """summary.json, summary.md and summary.png over every run in `output_dir`."""
    output_dir = Path(output_dir)
    runs = collect(output_dir)
    paths = {"json": output_dir / "summary.json", "markdown": output_dir / "summary.md", "plot": output_dir / "summary.png"}
    paths["json"].write_text(json.dumps(runs, indent=2, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown_table(runs) + "\n" + (pivot_markdown(runs) if runs else ""), encoding="utf-8")
    if plot(runs, paths["plot"]) is None:
        del paths["plot"]
    return paths
