"""Lab experiments: one file per paper, registered by name.

An experiment is a function `run(ctx: Context) -> Result` decorated with `@register("name", paper=...,
claim=...)`. It trains its variants with `clmkit.lab.train.train`, measures, and returns table rows,
loss curves and an optional figure; `run_experiment` writes results.json, the plots and the table.
Adding a paper = one new module here (its config is the dataclass at its top) + its test.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from clmkit.errors import InputError
from clmkit.registry import Registry


SIZES = ("default", "small")


@dataclass
class Context:
    """What a run is asked for. `scale` multiplies training steps; 1.0 is the
    default budget (a few to ~30 CPU-minutes on 2 cores); tests use tiny scales."""

    scale: float = 1.0
    device: str = "cpu"
    output: Path = Path("runs/lab")
    seed: int = 0
    progress: bool = True
    size: str = "default"  # "default" or "small" (see _common.Size)
    tiny: bool = False  # smoke tests: shrink the model too, not only the steps

    def steps(self, base: int, minimum: int = 4) -> int:
        return max(minimum, round(base * self.scale))

    def count(self, base: int, minimum: int = 8) -> int:
        """Evaluation sizes: `base` (evaluation is cheap next to training), `minimum` in smoke tests."""
        return minimum if self.tiny else base

    def run_dir(self, variant: str) -> Path:
        return self.output / "checkpoints" / variant


@dataclass
class Result:
    rows: list[dict]                                    # the table: one row per variant
    curves: dict = field(default_factory=dict)          # variant -> TrainResult (loss curves)
    extra: dict = field(default_factory=dict)           # anything else measured (kept in results.json)
    figure: Callable[[Path], None] | None = None        # draws the experiment's own plot to a path
    notes: list[str] = field(default_factory=list)      # setting / caveats printed under the table


@dataclass
class Spec:
    name: str
    run: Callable[[Context], Result]
    paper: str
    claim: str


EXPERIMENTS = Registry("experiment", __name__)


def register(name: str, paper: str, claim: str):
    def wrap(fn):
        EXPERIMENTS.entries[name] = Spec(name, fn, paper, claim)
        return fn

    return wrap


def available() -> list[str]:
    return EXPERIMENTS.names()


def get(name: str) -> Spec:
    return EXPERIMENTS.get(name)


def check_device(device: str) -> str:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available on this machine")
    return device


def run_experiment(name: str, ctx: Context, command: str | None = None) -> dict:
    """Run experiment `name`; write <output>/results.json, <output>/<name>.png (+ curves.png)."""
    spec = get(name)
    if not ctx.scale > 0:
        raise InputError(f"--scale must be > 0, got {ctx.scale}")
    if ctx.size not in SIZES:
        raise InputError(f"--size must be one of {', '.join(SIZES)}, got {ctx.size!r}")
    check_device(ctx.device)
    from clmkit.lab.train import plot_curves

    ctx.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(ctx.seed)
    t0 = time.perf_counter()
    result = spec.run(ctx)
    seconds = time.perf_counter() - t0
    record = {
        "experiment": name, "paper": spec.paper, "claim": spec.claim,
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "scale": ctx.scale, "size": ctx.size, "device": ctx.device, "seed": ctx.seed, "seconds": round(seconds, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "rows": result.rows, "extra": result.extra, "notes": result.notes,
        "curves": {k: v.curves() for k, v in result.curves.items()},
    }
    (ctx.output / "results.json").write_text(json.dumps(record, indent=1))
    if result.curves:
        plot_curves(result.curves, ctx.output / "curves.png", f"{name}: training loss")
    if result.figure is not None:
        result.figure(ctx.output / f"{name}.png")
    return record


def print_table(record: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = record["rows"]
    table = Table(title=f"{record['experiment']} — {record['paper']}", title_justify="left")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "model") else "right")
    for r in rows:
        table.add_row(*[fmt(r.get(c, "")) for c in columns])
    console.print(table)
    for note in record["notes"]:
        console.print(f"  {note}", style="dim", highlight=False)
    console.print(f"  {record['seconds']:.0f} s on {record['device']} ({record['threads']} threads); {record['command']}",
                  style="dim", highlight=False, markup=False)


def markdown_table(record: dict) -> str:
    """The rows of a results.json as a Markdown table (what docs/lab.md shows)."""
    rows = record["rows"]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
