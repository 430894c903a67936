"""`clm eval causal`: run an LM with a prompting strategy on a causal-reasoning benchmark.

    clm eval causal --task cladder --model smollm2-135m --strategy cot --limit 50
    clm eval causal --task corr2cause --model openai:gpt-4o-mini --base-url https://api.openai.com/v1
    clm eval causal --task cladder --strategy direct-ll                 # log-likelihood scoring
    clm eval causal --task cladder --strategy cot --batch-size 8        # 8 items decoded together
    clm eval causal --task cladder --strategy cot --ray auto            # over a Ray cluster
    clm eval causal --task cladder --strategy cot --backend torch      # HF kernels (default auto: llama.cpp for GGUF)

`clmkit.cli` mounts `eval_causal` on the `eval` group. Predictions go to
<output-dir>/<task>__<strategy>__<model>.jsonl as they are made (a rerun resumes), and the
summary (JSON, Markdown, PNG) covers every run in <output-dir>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from clmkit.errors import ClmkitError
from clmkit.reasoning.evaluate import NO_MODEL
from clmkit.reasoning.strategies import STRATEGIES

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


class NoModel:
    """Stands in for the LM under `--strategy solver`, which never calls one."""

    name = NO_MODEL


def eval_causal(
    task: str = typer.Option(..., "--task", "-t", help="cladder, calm, cold, causalnet, corr2cause, counterbench, "
                                                        "axiomatic, cold-full, calm:<TASK>, cold:<activity>."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="A clmkit model, or openai:NAME for an endpoint."),
    strategy: str = typer.Option("direct", "--strategy", "-s", help=f"One of: {', '.join(STRATEGIES)}."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Evaluate N items spread over the task."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (with openai:NAME)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the key."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds per endpoint request."),
    output_dir: Path = typer.Option(Path("runs/causal"), "--output-dir", "-o", help="Where predictions and reports go."),
    resume: bool = typer.Option(True, "--resume/--restart", help="Skip items already in the predictions file."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="clmkit models: a speculative drafter "
                                                                         "(lossless: same answers, faster)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="clmkit models: decode B items together "
                                                                  "(greedy answers unchanged)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Fan items out over Ray: 'local' (a cluster on this "
                                                          "machine), 'auto' (the cluster this machine is in) or "
                                                          "ray://HOST:PORT. Needs clmkit[ray]."),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", help="Ray actors (default: one per CPU)."),
    backend: str = typer.Option("auto", "--backend", help="clmkit models: auto (llama.cpp for GGUF/embedded models "
                                                          "when installed), torch or llama.cpp."),
):
    """Evaluate a model with a prompting strategy on a causal-reasoning task."""
    from clmkit.reasoning.evaluate import batched, metrics, predictions_path, run, select, write_report
    from clmkit.reasoning.lm import make_model, parse_model_spec
    from clmkit.tasks.registry import load_task

    if strategy not in STRATEGIES:
        _fail(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if limit is not None and limit < 1:
        _fail(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {batch_size}")
    try:
        items = select(load_task(task), limit)
        kind, model_name = parse_model_spec(model)
        if kind != "clmkit" or strategy == "solver":
            backend_name = None  # an endpoint runs its own kernels; solver runs none
            if backend not in ("auto", "torch"):
                make_model(model, backend=backend)  # the clear error for --backend on an endpoint
        else:
            from clmkit.models import resolve_backend

            backend_name = resolve_backend(model, backend)
        if ray is not None:  # the workers load the model; this process only writes the records
            from clmkit.reasoning.distributed import ModelSpec, ray_executor

            lm = None
            name = NoModel.name if strategy == "solver" else model_name or model
            executor = ray_executor(ModelSpec(model, base_url, api_key_env, timeout, drafter, backend_name or "torch"),
                                    strategy, address=ray, workers=ray_workers, batch_size=batch_size)
        else:
            # the exact engine answers alone: no LM is loaded, and none is named in the outputs
            lm = NoModel() if strategy == "solver" else make_model(model, base_url=base_url, api_key_env=api_key_env,
                                                                    timeout=timeout, drafter=drafter,
                                                                    backend=backend_name or "torch")
            name, executor = lm.name, batched(lm, strategy, batch_size)
    except (ClmkitError, FileNotFoundError) as e:
        _fail(str(e))
    path = predictions_path(output_dir, task, strategy, name)
    progress = Progress(TextColumn(f"{task} · {strategy}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("acc {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=err, transient=True)
    seen = {"n": 0, "score": 0.0}

    def on_record(record) -> None:
        if record is not None:
            seen["n"] += 1
            seen["score"] += record["score"]
        acc = f"{seen['score'] / seen['n']:.3f}" if seen["n"] else "-"
        progress.update(bar, advance=1, acc=acc)

    with progress:
        bar = progress.add_task("eval", total=len(items), acc="-")
        try:
            records = run(items, lm, strategy, path, task=task, resume=resume, on_record=on_record,
                          executor=executor, model_name=name, backend=backend_name)
        except ClmkitError as e:  # e.g. the Ray cluster cannot be reached; the JSONL keeps what was done
            _fail(str(e))
    wanted = {item.id for item in items}
    summary = metrics([r for r in records if r["id"] in wanted])
    reports = write_report(output_dir)

    table = Table(title=f"{task} · {strategy} · {name}")
    for column in ("n", "accuracy", "95% CI", "acc_norm", "F1 (yes)", "unparsed", "errors", "wall s"):
        table.add_column(column, justify="right")
    f1 = "" if summary["f1_yes"] is None else f"{summary['f1_yes']:.3f}"
    norm = "" if summary["acc_norm"] is None else f"{summary['acc_norm']:.3f}"
    low, high = summary["accuracy_ci95"]
    table.add_row(str(summary["n"]), f"{summary['accuracy']:.3f}", f"{low:.2f}–{high:.2f}", norm, f1,
                  str(summary["unparsed"]), str(summary["errors"]), f"{summary['wall_s']:.0f}")
    out.print(table)
    out.print(f"predictions: {path}\nsummary: {', '.join(str(p) for p in reports.values())}", highlight=False)
    if summary["errors"]:
        err.print(f"[yellow]{summary['errors']} row(s) failed (see 'error' in {path}); rerun to retry them[/]")


def register(app: typer.Typer) -> None:
    """Mount as `<app> causal` (the lead calls this with the `eval` group)."""
    app.command("causal")(eval_causal)

