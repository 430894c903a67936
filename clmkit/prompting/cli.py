"""`clm eval code|recall|position-bias|judge|compress` and `clm train compressor`.

    clm eval code --dataset humaneval --strategy plain --strategy cot --strategy secot --limit 20 --batch-size 8
    clm eval recall --limit 100 --pairs 32 --rag 20          # JRT vs the plain prompt
    clm eval position-bias --task cold --limit 100           # every option order, plain vs PINE
    clm eval judge --limit 40                                # LM-as-a-judge, A/B swapped, plain vs PINE
    clm train compressor --limit 120 --epochs 8 -o runs/compressor
    clm eval compress --compressor runs/compressor --source gsm8k --rate 0.5 --limit 50

`register(app, eval_app)` mounts them (the `train` group is created if no other module made it).
Results: <output-dir>/<run>.jsonl (per-item records; a rerun resumes) and <run>.summary.{json,md,png}.
Items run spread-first (a run stopped early has sampled the whole task); `--done-only` summarizes the
finished items of a stopped run. `code` and `recall` only generate, so `--backend llama.cpp` runs them
on the GGUF's own kernels; the others need torch logits under custom masks.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clmkit.errors import ClmkitError, InputError

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True)


def _run(title: str, work) -> None:
    """Run `work(progress)`, print its summary table; bad input or missing data -> one line, exit 2."""
    from clmkit.bench.report import print_table

    try:
        with _progress() as progress:
            summary, columns = work(progress)
    except (ClmkitError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2)
    print_table(title, columns, summary["rows"], out)


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")


def _load(model: str, backend: str = "torch"):
    from clmkit.models import load

    return load(model, backend=backend)


MODEL = typer.Option("smollm2-135m", "--model", "-m", help="A clmkit model (embedded name, HF folder, .gguf).")
DONE_ONLY = typer.Option(False, "--done-only", help="Summarize the items of this selection that are finished "
                                                    "(an interrupted run); compute nothing new.")
BACKEND = typer.Option("torch", "--backend", "-b", help="torch or llama.cpp (or auto): generation only, so the "
                                                        "quantized llama.cpp kernels may run it (see docs/backends.md).")


def eval_code(
    dataset: str = typer.Option("humaneval", "--dataset", "-d", help="humaneval or mbpp (test split)."),
    strategy: list[str] = typer.Option(["plain", "cot", "secot"], "--strategy", "-s",
                                       help="plain, fewshot, cot, secot (repeatable; interleaved per item)."),
    model: str = MODEL,
    backend: str = BACKEND,
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="N problems spread over the dataset."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds per candidate in the sandbox."),
    memory_mb: int = typer.Option(1024, "--memory-mb", help="Address-space limit per candidate."),
    batch_size: int = typer.Option(1, "--batch-size", help="Decode B (problem, strategy) attempts together "
                                                           "(greedy output unchanged; see docs/reasoning.md)."),
    code_tokens: Optional[int] = typer.Option(None, "--code-tokens", help="Token budget of the call that writes "
                                              "the code (default: that of the records already there, else 512)."),
    done_only: bool = DONE_ONLY,
    output_dir: Path = typer.Option(Path("runs/prompting/code"), "--output-dir", "-o"),
):
    """SeCoT: pass@1 of code strategies, candidates executed in the sandbox."""
    from clmkit.prompting.experiments import code_pass_at_1
    from clmkit.reasoning.lm import ClmkitModel

    def work(progress):
        from clmkit.prompting.secot import CODE_STRATEGIES
        from clmkit.tasks.code import DATASETS

        _positive("--limit", limit)
        _positive("--batch-size", batch_size)
        _positive("--code-tokens", code_tokens)
        if dataset not in DATASETS or any(s not in CODE_STRATEGIES for s in strategy):
            raise InputError(f"--dataset is one of {', '.join(DATASETS)}; --strategy of {', '.join(CODE_STRATEGIES)}")
        lm = SimpleNamespace(name=model, backend=backend) if done_only else ClmkitModel(model, backend=backend)
        s = code_pass_at_1(lm, dataset, strategy, limit, output_dir / dataset, timeout_s=timeout, memory_mb=memory_mb,
                           done_only=done_only, progress=progress, batch_size=batch_size,
                           code_tokens=code_tokens)
        return s, ["strategy", "n", "correct", "pass@1", "ci95", "mean_s"]

    _run(f"{dataset} pass@1 · {model}", work)


def eval_recall(
    model: str = MODEL,
    backend: str = BACKEND,
    limit: int = typer.Option(100, "--limit", "-n", help="Generated key-value recall items."),
    pairs: int = typer.Option(32, "--pairs", help="Key-value pairs per item."),
    rag: int = typer.Option(0, "--rag", help="Also N Spec-Bench rag questions (reference answers)."),
    seed: int = typer.Option(0, "--seed"),
    done_only: bool = DONE_ONLY,
    output_dir: Path = typer.Option(Path("runs/prompting/recall"), "--output-dir", "-o"),
):
    """JRT-Prompt: recall accuracy and prefill cost, plain prompt vs the input read twice."""
    from clmkit.prompting.experiments import recall

    def work(progress):
        _positive("--limit", limit)
        _positive("--pairs", pairs)
        s = recall(_load(model, backend), limit, pairs, output_dir, rag_limit=rag, seed=seed, done_only=done_only,
                   progress=progress)
        return s, ["task", "method", "n", "accuracy", "ci95", "prompt_tokens", "prefill_ms_median", "prefill_x_plain"]

    _run(f"JRT · {model}", work)


def eval_position_bias(
    task: str = typer.Option("cold", "--task", "-t", help="A multiple-choice task: cold, causalnet, cold:<activity>."),
    model: str = MODEL,
    limit: Optional[int] = typer.Option(100, "--limit", "-n"),
    score: str = typer.Option("content", "--score", help="content (log-likelihood of each option's text) or label."),
    done_only: bool = DONE_ONLY,
    output_dir: Path = typer.Option(Path("runs/prompting/position"), "--output-dir", "-o"),
):
    """PINE: accuracy over every order of the options, plain vs PINE."""
    from clmkit.prompting.experiments import position_bias

    def work(progress):
        _positive("--limit", limit)
        s = position_bias(_load(model), task, limit, output_dir, score=score, done_only=done_only, progress=progress)
        return s, ["method", "n", "orders", "accuracy_mean", "accuracy_min", "accuracy_max", "spread", "consistency",
                   "picked_first_position"]

    _run(f"position bias · {task} · {model}", work)


def eval_judge(
    model: str = MODEL,
    limit: Optional[int] = typer.Option(40, "--limit", "-n"),
    done_only: bool = DONE_ONLY,
    output_dir: Path = typer.Option(Path("runs/prompting/judge"), "--output-dir", "-o"),
):
    """PINE: LM-as-a-judge on Spec-Bench answer pairs with A/B swapped, plain vs PINE."""
    from clmkit.prompting.experiments import judge_consistency

    def work(progress):
        _positive("--limit", limit)
        s = judge_consistency(_load(model), limit, output_dir, done_only=done_only, progress=progress)
        return s, ["method", "n", "consistency", "consistency_ci95", "accuracy", "picked_A"]

    _run(f"judge swap consistency · {model}", work)


def eval_compress(
    compressor: Optional[Path] = typer.Option(None, "--compressor", "-c", help="Checkpoint of `clm train compressor`."),
    source: str = typer.Option("gsm8k", "--source", help="gsm8k or summarization (evaluation rows)."),
    rate: float = typer.Option(0.5, "--rate", "-r", help="Fraction of tokens to keep, in (0, 1]."),
    model: str = MODEL,
    limit: Optional[int] = typer.Option(50, "--limit", "-n"),
    generate: bool = typer.Option(False, "--generate", help="GSM8K: also generate answers and score accuracy (slow)."),
    done_only: bool = DONE_ONLY,
    output_dir: Path = typer.Option(Path("runs/prompting/compress"), "--output-dir", "-o"),
):
    """LLMLingua-2 vs LLMLingua-1 vs random vs the full prompt: answer likelihood, rate, prefill."""
    from clmkit.prompting.experiments import compression

    def work(progress):
        _positive("--limit", limit)
        if not 0 < rate <= 1:
            raise InputError(f"--rate must be in (0, 1], got {rate}")
        s = compression(_load(model), compressor, source, limit, rate, output_dir, generate=generate,
                        done_only=done_only, progress=progress)
        return s, ["method", "n", "rate_achieved", "answer_nll", "prefill_ms_median", "prefill_x_full"] + (
            ["accuracy", "ci95"] if generate else [])

    _run(f"compression · {source} · rate {rate} · {model}", work)


def train_compressor(
    model: str = MODEL,
    source: list[str] = typer.Option(["gsm8k", "summarization"], "--source", help="Training prompts (repeatable)."),
    limit: int = typer.Option(120, "--limit", "-n", help="Training prompts per source."),
    epochs: int = typer.Option(8, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(5e-4, "--lr"),
    keep_fraction: float = typer.Option(0.5, "--keep-fraction", help="Fraction of words labelled keep."),
    feature_layer: int = typer.Option(-1, "--feature-layer", help="Classifier input: LM hidden states after this "
                                                                   "layer (-1 = last, 0 = input embeddings)."),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(True, "--resume/--restart", help="Continue after the last finished epoch."),
    output_dir: Path = typer.Option(Path("runs/compressor"), "--output-dir", "-o"),
):
    """LLMLingua-2: label prompts with the target LM, train the keep/drop token classifier."""
    from clmkit.prompting.compress_data import SOURCES
    from clmkit.prompting.compress_train import check_options, train

    def work(progress):
        check_options(epochs, batch_size, limit, keep_fraction, lr)
        if not source or any(s not in SOURCES for s in source):
            raise InputError(f"--source is one of {', '.join(SOURCES)}, got {', '.join(source) or 'none'}")
        history = train(_load(model), output_dir, source, limit=limit, epochs=epochs, batch_size=batch_size, lr=lr,
                        seed=seed, keep_fraction=keep_fraction, feature_layer=feature_layer, resume=resume,
                        progress=progress)
        rows = [{"epoch": e, "train_loss": t, "val_loss": v, "val_token_accuracy": a} for e, t, v, a in
                zip(history["epoch"], history["train_loss"], history["val_loss"], history["val_token_accuracy"])]
        return {"rows": rows}, ["epoch", "train_loss", "val_loss", "val_token_accuracy"]

    if resume is False and (output_dir / "state.pt").exists():
        (output_dir / "state.pt").unlink()
    _run(f"compressor training → {output_dir}", work)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    for name, command in (("code", eval_code), ("recall", eval_recall), ("position-bias", eval_position_bias),
                          ("judge", eval_judge), ("compress", eval_compress)):
        eval_app.command(name)(command)
    train_app = next((g.typer_instance for g in app.registered_groups if g.name == "train"), None)
    if train_app is None:
        train_app = typer.Typer(no_args_is_help=True, help="Training commands.")
        app.add_typer(train_app, name="train")
    train_app.command("compressor")(train_compressor)
