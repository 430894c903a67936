"""`clm causal ...`: solve formal causal benchmarks exactly, and generate new items.

    clm causal solve --task corr2cause --input test_public.csv --output preds.jsonl
    clm causal generate --task counterbench --n 100 --seed 0 --output new.jsonl

Every task lives in one registry: `SOLVERS` (how to read rows, solve one, and find its gold label)
and `GENERATORS` (how to make and write new rows). Adding a benchmark is adding an entry.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clmkit.causal.solve import Solution, solve_axiomatic, solve_corr2cause, solve_counterbench

causal_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Exact causal engine: solve formal benchmarks, generate new items.")
err = Console(stderr=True, soft_wrap=True)


# ---- reading input rows -----------------------------------------------------------------------

class RowError(ValueError):
    """One input row is malformed; recorded for that row, the run goes on."""


def read_rows(path: Path) -> Iterator[dict | RowError]:
    """CSV (by extension) or JSON Lines; a line that is not a JSON object yields a RowError."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield RowError(f"line {n} is not JSON: {e.msg}")
                continue
            yield row if isinstance(row, dict) else RowError(f"line {n} is not a JSON object")


def field(row: dict, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"missing or empty field {name!r}")
    return value


def yes_no(value) -> str | None:
    """Gold labels as "yes"/"no": 1/0, "1"/"0", "yes"/"no", True/False; None when absent."""
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text in ("1", "yes", "true"):
        return "yes"
    if text in ("0", "no", "false"):
        return "no"
    raise RowError(f"cannot read the gold label {value!r}")


# ---- the registry -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SolveTask:
    solve: Callable[[dict], Solution]       # one row -> Solution; raise RowError for a malformed row
    gold: Callable[[dict], str | None]      # the row's gold answer as "yes"/"no", None if unlabelled


def _solve_cladder(prompt: str) -> Solution:
    from clmkit.causal.cladder import solve_for_engine
    return solve_for_engine(prompt)


SOLVERS: dict[str, SolveTask] = {
    "corr2cause": SolveTask(solve=lambda row: solve_corr2cause(field(row, "input")),
                            gold=lambda row: yes_no(row.get("label"))),
    "counterbench": SolveTask(solve=lambda row: solve_counterbench(field(row, "question"), field(row, "given_info")),
                              gold=lambda row: yes_no(row.get("answer"))),
    "cladder": SolveTask(solve=lambda row: _solve_cladder(field(row, "prompt")),   # clmkit.causal.cladder
                         gold=lambda row: yes_no(row.get("label"))),
    "axiomatic": SolveTask(solve=lambda row: solve_axiomatic(field(row, "prompt")),
                           gold=lambda row: yes_no(row.get("answer"))),
}


def _generate_corr2cause(n: int, seed: int, out: TextIO) -> None:
    from clmkit.tasks import corr2cause
    corr2cause.write_csv(corr2cause.generate(n, seed), out)


def _generate_counterbench(n: int, seed: int, out: TextIO) -> None:
    from clmkit.tasks import counterbench
    counterbench.write_jsonl(counterbench.generate(n, seed), out)


def _generate_axiomatic(n: int, seed: int, out: TextIO) -> None:
    from clmkit.tasks import axiomatic
    axiomatic.write_jsonl(axiomatic.generate(n, seed), out)


GENERATORS: dict[str, Callable[[int, int, TextIO], None]] = {
    "corr2cause": _generate_corr2cause,       # CSV: input,label,num_variables,template
    "counterbench": _generate_counterbench,   # JSONL: question,given_info,answer,type,question_id,meta
    "axiomatic": _generate_axiomatic,         # JSONL: prompt,answer,setting,num_nodes,...
}


def _choose(task: str, registry: dict) -> str:
    if task not in registry:
        raise typer.BadParameter(f"unknown task {task!r}; choose from {', '.join(sorted(registry))}", param_hint="--task")
    return task


# ---- commands ---------------------------------------------------------------------------------

def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True)


@causal_app.command()
def solve(
    task: str = typer.Option(..., "--task", help=f"One of: {', '.join(SOLVERS)}."),
    input: Path = typer.Option(..., "--input", help="Rows to solve: .csv, or JSON Lines; the gold label is optional."),
    output: Path = typer.Option(..., "--output", help="Predictions, one JSON line per row, written as they come."),
):
    """Answer every row exactly; print a JSON summary (accuracy when the rows have labels)."""
    spec = SOLVERS[_choose(task, SOLVERS)]
    if not input.is_file():
        raise typer.BadParameter(f"no such file: {input}", param_hint="--input")
    try:
        rows = list(read_rows(input))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        err.print(f"[bold red]error:[/] cannot read {input}: {e}", highlight=False)
        raise typer.Exit(2)

    statuses: Counter[str] = Counter()
    labelled = correct = 0
    confusion: Counter[tuple[str, str | None]] = Counter()   # (gold, prediction)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as out, _progress() as bar:
        job = bar.add_task(f"solving {task}", total=len(rows))
        for index, row in enumerate(rows):
            record: dict = {"index": index}
            try:
                if isinstance(row, RowError):
                    raise row
                gold = spec.gold(row)
                solution = spec.solve(row)
                record |= {"prediction": solution.prediction, "status": solution.status, "detail": solution.detail}
                if gold is not None:
                    record |= {"gold": gold, "correct": solution.prediction == gold}
                    labelled += 1
                    correct += solution.prediction == gold
                    confusion[(gold, solution.prediction)] += 1
            except RowError as e:
                record |= {"prediction": None, "status": "error", "detail": str(e)}
            except Exception as e:  # a solver bug on one row must not lose the rest of the run
                record |= {"prediction": None, "status": "error", "detail": f"{type(e).__name__}: {e}"}
            statuses[record["status"]] += 1
            out.write(json.dumps(record) + "\n")
            out.flush()   # an interrupted run keeps every row solved so far
            bar.advance(job)

    summary: dict = {"task": task, "input": str(input), "output": str(output), "rows": len(rows),
                     "status": dict(sorted(statuses.items())), "labelled": labelled}
    if labelled:
        tp, fp, fn = confusion[("yes", "yes")], sum(v for (g, p), v in confusion.items() if p == "yes" and g == "no"), \
            sum(v for (g, p), v in confusion.items() if g == "yes" and p != "yes")
        summary |= {"correct": correct, "accuracy": round(correct / labelled, 4),
                    "f1_yes": round(2 * tp / (2 * tp + fp + fn), 4) if tp else 0.0}
    typer.echo(json.dumps(summary))


@causal_app.command()
def generate(
    task: str = typer.Option(..., "--task", help=f"One of: {', '.join(GENERATORS)}."),
    n: int = typer.Option(..., "--n", min=1, help="How many items."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same items."),
    output: Optional[Path] = typer.Option(None, "--output", help="File to write (default: stdout), in the real file's format."),
):
    """Generate new items labelled by the exact engine, in the benchmark's own file format."""
    make = GENERATORS[_choose(task, GENERATORS)]
    if output is None:
        make(n, seed, sys.stdout)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with err.status(f"generating {n} {task} items"), open(output, "w", newline="", encoding="utf-8") as out:
        make(n, seed, out)
    err.print(f"wrote {n} {task} items to {output}", highlight=False)
