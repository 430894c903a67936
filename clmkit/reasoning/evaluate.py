"""Run a strategy over a task's items, writing each prediction as it is made; then score and report.

    records = run(items, model, "cot", out / "cladder__cot__smollm2-135m.jsonl")
    summary = metrics(records)                        # accuracy, F1 (positive class), unparsed, ...
    write_report(out)                                 # summary.json, summary.md, summary.png over all runs

One JSON line per item is appended and flushed before the next item starts, so an interrupted run
(Ctrl-C, crash, lost endpoint) keeps everything done so far, and running again resumes after the
last finished item. A row whose model call fails (endpoint timeout, garbage response) is recorded
with its error and counted wrong; the run goes on.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from clmkit.reasoning.answers import extract, grade
from clmkit.reasoning.lm import TextModel
from clmkit.reasoning.strategies import STRATEGIES
from clmkit.tasks.base import TaskItem

BREAKDOWN_KEYS = ("task", "template", "type", "rung", "query_type", "graph", "level", "activity", "setting",
                  "num_variables")
MAX_LOGGED_CHARS = 4000  # per model call in the JSONL trace


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
    started = time.perf_counter()
    record: dict[str, Any] = {"id": item.id, "gold": item.answer, "meta": item.meta}
    try:
        attempt = STRATEGIES[strategy](model, item)
        prediction = attempt.prediction if attempt.prediction is not None else extract(item, attempt.output)
        record.update(prediction=prediction, score=grade(item, prediction), unparsed=prediction is None,
                      error=None, output=attempt.output[:MAX_LOGGED_CHARS], steps=_trimmed(attempt.steps))
    except Exception as e:  # noqa: BLE001 — one bad row (endpoint down, garbage) must not end the run
        record.update(prediction=None, score=0.0, unparsed=False, error=f"{type(e).__name__}: {e}", output="", steps=[])
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def run(items: Iterable[TaskItem], model: TextModel, strategy: str, path: Path, *, task: str = "",
        resume: bool = True, on_record=None) -> list[dict]:
    """Append one record per item to `path` (flushed each time); skip items already there if resuming."""
    if strategy not in STRATEGIES:
        raise KeyError(strategy)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_records(path) if resume else []
    seen = {r["id"] for r in done if r.get("error") is None}  # rows that failed are tried again
    records = [r for r in done if r["id"] in seen]
    if resume and path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:  # a torn last line: start the next record on its own line
            f.write("\n")
    with open(path, "a" if resume else "w", encoding="utf-8") as f:
        for item in items:
            if item.id in seen:
                if on_record:
                    on_record(None)
                continue
            record = run_item(model, strategy, item)
            record.update(task=task or item.meta.get("task", ""), strategy=strategy, model=getattr(model, "name", "?"))
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


def _basic(records: list[dict]) -> dict:
    n = len(records)
    return {
        "n": n,
        "accuracy": sum(r["score"] for r in records) / n if n else 0.0,
        "correct": sum(r["score"] == 1.0 for r in records),
        "unparsed": sum(bool(r.get("unparsed")) for r in records),
        "errors": sum(r.get("error") is not None for r in records),
    }


def metrics(records: list[dict]) -> dict:
    """Accuracy (mean score), F1 on the positive class, unparsed and error counts, and breakdowns."""
    out = _basic(records)
    out["f1_yes"] = _f1_positive(records)
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
    lines = ["| task | strategy | model | n | accuracy | F1 (yes) | unparsed | errors |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for run in runs.values():
        f1 = "" if run["f1_yes"] is None else f"{run['f1_yes']:.3f}"
        lines.append(f"| {run['task']} | {run['strategy']} | {run['model']} | {run['n']} | {run['accuracy']:.3f} | "
                     f"{f1} | {run['unparsed']} | {run['errors']} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], path: Path) -> Path | None:
    """Strategy x task heatmap of accuracy (one panel per model), PNG via matplotlib's Agg backend."""
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in runs.values()})
    tasks = sorted({r["task"] for r in runs.values()})
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs.values())]
    fig, axes = plt.subplots(1, len(models), figsize=(1.2 + 1.1 * len(tasks) * len(models), 1.2 + 0.6 * len(strategies)),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        grid = [[float("nan")] * len(tasks) for _ in strategies]
        for r in runs.values():
            if r["model"] == model:
                grid[strategies.index(r["strategy"])][tasks.index(r["task"])] = r["accuracy"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(strategies)), strategies)
        ax.set_title(model)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:  # not NaN
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
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
    paths["markdown"].write_text(markdown_table(runs), encoding="utf-8")
    if plot(runs, paths["plot"]) is None:
        del paths["plot"]
    return paths
