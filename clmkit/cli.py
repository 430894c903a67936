"""`clm`: the command line, a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from clmkit.errors import ClmkitError, InputError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="clmkit: fast, lossless decoding and evaluation for causal LMs.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks (interleaved, one process, ratios).")
models_app = typer.Typer(no_args_is_help=True, help="Embedded models: list, fetch.")
eval_app = typer.Typer(no_args_is_help=True, help="Accuracy evaluations.")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
err = Console(stderr=True, soft_wrap=True)


@contextmanager
def user_errors():
    """Bad input ends the command with one clear line and exit code 2, never a traceback."""
    try:
        yield
    except ClmkitError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2)


def read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    if (prompt is None) == (prompt_file is None):
        raise InputError("give the prompt as an argument or with --prompt-file (exactly one)")
    if prompt_file is None:
        return prompt
    try:
        raw = prompt_file.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read prompt file {prompt_file}: {e.strerror}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"prompt file {prompt_file} is not UTF-8 text (invalid byte at offset {e.start})")


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help="The prompt text."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", "-f", help="Read the prompt from a UTF-8 file."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Embedded name, HF model directory, or .gguf file."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", help="0 = off."),
    top_p: float = typer.Option(1.0, "--top-p", help="1 = off."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the chat template (default: on for instruct models)."),
    truncate: bool = typer.Option(False, "--truncate", help="Keep the last tokens of a prompt longer than the context."),
    drafter: Optional[str] = typer.Option(None, "--drafter", "-d", help="Speculative drafter (see `clm drafters`)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
):
    """Generate a continuation of PROMPT, streaming it to the terminal."""
    from clmkit.engine import Engine
    from clmkit.models import load
    from clmkit.sampling import Sampling

    with user_errors():
        text = read_prompt(prompt, prompt_file)
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        engine = Engine(load(model))
        chunks = engine.generate(
            text, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, chat=chat,
            drafter=drafter, truncate=truncate,
        )
        parts, ids, last, finish = [], [], None, None
        try:
            for last in chunks:
                parts.append(last.text)
                ids.extend(last.token_ids)
                finish = last.finish_reason
                if not as_json:
                    sys.stdout.write(last.text)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            finish = "interrupted"  # keep what was generated; report it below
        stats = last.stats.as_dict() if last else {}
        if as_json:
            print(json.dumps({"model": engine.model.name, "text": "".join(parts), "token_ids": ids, "finish_reason": finish, "stats": stats}))
        else:
            sys.stdout.write("\n")
            if stats:
                line = (
                    f"{stats['prompt_tokens']} prompt + {stats['new_tokens']} new tokens, "
                    f"first token {stats['ttft_s'] * 1000:.0f} ms, {stats['decode_tokens_per_s']:.1f} tokens/s"
                )
                if drafter:
                    line += f", {stats['mean_accepted']:.2f} tokens/step"
                if finish == "interrupted":
                    line += " (interrupted)"
                err.print(line, style="dim", markup=False, highlight=False)
        if finish == "interrupted":
            raise typer.Exit(130)


@app.command("drafters")
def list_drafters():
    """List the registered speculative drafters."""
    from clmkit.drafters import available

    for name in available():
        print(name)


@models_app.command("list")
def models_list():
    """List the embedded models and whether their weights are installed."""
    from clmkit.models import EMBEDDED

    for spec in EMBEDDED.values():
        try:
            spec.locate()
            state = "installed"
        except ClmkitError:
            state = f"not installed: {spec.install}"
        print(f"{spec.name:16} {spec.description}  [{state}]")


@bench_app.command("baseline")
def bench_baseline(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    per_category: int = typer.Option(2, "--per-category", help="Spec-Bench prompts per category."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    memory_tokens: int = typer.Option(2000, "--memory-tokens", help="Length of the memory-profile generation (0 = skip)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results folder (default runs/baseline-TIME)."),
):
    """clmkit's decode loop vs HF generate: tokens/s, ratio, parity, memory."""
    from clmkit.bench.baseline import run_baseline

    with user_errors():
        if per_category < 1 or max_new_tokens < 1 or memory_tokens < 0:
            raise InputError("--per-category and --max-new-tokens must be >= 1, --memory-tokens >= 0")
        run_baseline(model, per_category, max_new_tokens, memory_tokens, output)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
