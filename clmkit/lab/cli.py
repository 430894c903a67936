"""`clm lab`: run an objectives-lab experiment by name.

    clm lab list
    clm lab show runs/lab/cm3/results.json --markdown
    clm lab run lexinvariant --scale 0.25 --output runs/lab/lexinvariant
    clm lab run cm3 --device cuda

`clmkit.cli` mounts `lab_app` as the `lab` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from clmkit.errors import ClmkitError

lab_app = typer.Typer(no_args_is_help=True, help="Objectives lab: small GPTs reproducing objective/architecture papers.")
err = Console(stderr=True, soft_wrap=True)


@lab_app.command("list")
def lab_list():
    """List the registered experiments with the paper and the claim each tests."""
    from clmkit.lab.experiments import available, get

    for name in available():
        spec = get(name)
        print(f"{name:16} {spec.paper}\n{'':16} claim: {spec.claim}")


@lab_app.command("show")
def lab_show(
    results: Path = typer.Argument(..., help="A results.json written by `clm lab run`."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table instead."),
):
    """Print the table of a finished run."""
    import json

    from clmkit.lab.experiments import markdown_table, print_table

    try:
        record = json.loads(results.read_text())
        record["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        err.print(f"[bold red]error:[/] {results} is not a lab results.json ({e})", highlight=False)
        raise typer.Exit(2)
    print(markdown_table(record)) if markdown else print_table(record)


@lab_app.command("run")
def lab_run(
    name: str = typer.Argument(..., help="Experiment name (see `clm lab list`)."),
    scale: float = typer.Option(1.0, "--scale", "-s", help="Multiplies training steps (1 = the default CPU budget)."),
    size: str = typer.Option("default", "--size", help="Model size: default, or small (half depth/width/rows, ~1/8 compute) for a slow or busy machine."),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu, cuda, cuda:1, mps."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for results.json, plots, checkpoints (default runs/lab/NAME)."),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train the experiment's variants, measure, and write results.json + plots; prints the table.
    A rerun with the same options resumes from the checkpoints in OUTPUT/checkpoints."""
    from clmkit.lab.experiments import Context, print_table, run_experiment

    try:
        ctx = Context(scale=scale, size=size, device=device, output=output or Path("runs/lab") / name, seed=seed, progress=progress)
        record = run_experiment(name, ctx)
    except ClmkitError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command to resume from the last checkpoint", highlight=False)
        raise typer.Exit(130)
    print_table(record)
    err.print(f"results: {ctx.output / 'results.json'}", style="dim", highlight=False, markup=False)
