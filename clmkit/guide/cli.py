"""CLI for guides: the `clm generate` guide flags, `clm guide ...` and `clm bench guided`.

    clm generate "Extract: Ann is 31." --json-schema person.json
    clm generate "Pick one" --choice yes --choice no --drafter lookup
    clm generate "A colour:" --choice "light blue" --choice red --aligned --samples 50 -t 1
    clm generate "Once upon a time" --decoding momentum
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clmkit.errors import InputError

DECODINGS = ("default", "momentum")


def build_guide(model, sampling, *, json_schema: Optional[Path] = None, regex: Optional[str] = None,
                grammar: Optional[Path] = None, choice: list[str] = (), aligned: bool = False, samples: int = 1,
                decoding: str = "default", rectifier: Optional[Path] = None):
    """The guide `clm generate`'s flags describe, or None. Bad combinations fail here, before loading work."""
    from clmkit.guide import make_guide

    if decoding not in DECODINGS:
        raise InputError(f"--decoding takes one of {', '.join(DECODINGS)}, got {decoding!r}")
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    if grammar is not None and not grammar.is_file():
        raise InputError(f"grammar file not found: {grammar}")
    if json_schema is not None and not json_schema.is_file():
        raise InputError(f"JSON schema file not found: {json_schema}")
    described = {k: v for k, v in dict(json_schema=json_schema, regex=regex, lark=grammar, choice=list(choice) or None).items()
                 if v is not None}
    if len(described) > 1:
        raise InputError("give one of --json-schema, --regex, --grammar, --choice")
    chosen = [name for name, on in (("a grammar", bool(described)), ("--decoding momentum", decoding == "momentum"),
                                    ("--rectifier", rectifier is not None)) if on]
    if len(chosen) > 1:
        raise InputError(f"{' and '.join(chosen)} cannot be combined (one guide per generation)")
    if aligned and not described:
        raise InputError("--aligned needs a grammar: --json-schema, --regex, --grammar or --choice")
    if aligned and sampling.greedy:
        raise InputError("--aligned samples from P(text | grammar): give --temperature > 0")
    if described:
        return make_guide("aligned" if aligned else "grammar", model, **described)
    if decoding == "momentum":
        return make_guide("momentum", model)
    if rectifier is not None:
        return make_guide("rectify", model, path=rectifier)
    return None


def run_samples(engine, text: str, guide, samples: int, as_json: bool, *, sampling, **options) -> None:
    """`clm generate --samples N`: N independent samples (seed, seed+1, ...); with an aligned guide each
    sample also tightens ASAp's estimates, so later samples are closer to P(text | grammar)."""
    import dataclasses
    import json
    import sys

    from rich.progress import Progress

    results = []
    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("sampling", total=samples)
        for i in range(samples):
            seed = None if sampling.seed is None else sampling.seed + i
            out = engine.complete(text, sampling=dataclasses.replace(sampling, seed=seed), guide=guide, **options)
            results.append({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                            "incomplete": out.incomplete})
            if not as_json:
                bar.console.print(f"[{i + 1}] {out.text}" + (" (INCOMPLETE)" if out.incomplete else ""),
                                  markup=False, highlight=False)
            bar.advance(task)
    if as_json:
        print(json.dumps({"model": engine.model.name, "samples": results}))
    else:
        counts: dict[str, int] = {}
        for r in results:
            counts[r["text"]] = counts.get(r["text"], 0) + 1
        sys.stderr.write("distinct outputs: " + ", ".join(f"{t!r} x{c}" for t, c in
                                                          sorted(counts.items(), key=lambda kv: -kv[1])[:10]) + "\n")


guide_app = typer.Typer(no_args_is_help=True, help="Guided generation experiments (grammar-aligned decoding, momentum, rectification).")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Mount `clm guide ...` and the guide benchmarks `clm bench momentum|guided`."""
    app.add_typer(guide_app, name="guide")
    bench_app.command("momentum")(bench_momentum)
    bench_app.command("guided")(bench_guided)
    bench_app.command("rectify")(bench_rectify)


@guide_app.command("train-rectifier")
def train_rectifier_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    rollouts: int = typer.Option(16, "--rollouts", help="Sampled rollouts per training prompt."),
    prompts: str = typer.Option("chat", "--prompts", help="Elicitation prompts: chat (8 instructions, chat template) or "
                                                         "continuation (16 sentence openings, no template)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n"),
    words: Optional[Path] = typer.Option(None, "--words", help="Word-list detector (one word a line) instead of alt-profanity-check."),
    epochs: int = typer.Option(200, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    threshold: float = typer.Option(0.5, "--threshold", help="Default risk threshold stored with the head."),
    output: Path = typer.Option(Path("runs/rectifier"), "--output", "-o"),
):
    """Train the value head of value-guided rectification on the model's own rollouts, labelled by a detector."""
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import Progress

    from clmkit.cli import user_errors
    from clmkit.engine import Engine
    from clmkit.guide.bench.rectify import PROMPT_SETS, train_rectifier
    from clmkit.models import load

    with user_errors():
        if rollouts < 1 or max_new_tokens < 1 or epochs < 1 or not 0 < threshold < 1:
            raise InputError("--rollouts, --max-new-tokens, --epochs must be >= 1 and --threshold in (0, 1)")
        if words is not None and not words.is_file():
            raise InputError(f"word list not found: {words}")
        check_prompt_set(prompts)
        engine = Engine(load(model, backend="torch"))  # the value head reads the torch module's hidden states
        with Progress() as bar:
            task = bar.add_task("rollouts", total=len(PROMPT_SETS[prompts][0]))
            config = train_rectifier(engine.model, engine, output, "clm " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                                     rollouts, max_new_tokens, words, epochs, seed=seed, threshold=threshold,
                                     progress=lambda: bar.advance(task), style=prompts)
        Console().print(config)


def check_prompt_set(name: str) -> None:
    from clmkit.guide.bench.rectify import PROMPT_SETS

    if name not in PROMPT_SETS:
        raise InputError(f"--prompts takes one of {', '.join(PROMPT_SETS)}, got {name!r}")


def bench_rectify(
    rectifier: Path = typer.Option(..., "--rectifier", help="A head from clm guide train-rectifier."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    samples: int = typer.Option(4, "--samples", help="Seeds per evaluation prompt (decoded as one batch)."),
    prompts: str = typer.Option("chat", "--prompts", help="Held-out prompts: chat (4) or continuation (8)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n"),
    threshold: Optional[float] = typer.Option(None, "--threshold"),
    words: Optional[Path] = typer.Option(None, "--words"),
    output: Path = typer.Option(Path("runs/rectify"), "--output", "-o"),
):
    """Undesired-output rate, perplexity and tokens/s with vs without rectification (same seeds)."""
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from clmkit.cli import user_errors
    from clmkit.engine import Engine
    from clmkit.guide.bench.rectify import PROMPT_SETS, run_rectify_bench
    from clmkit.models import load

    with user_errors():
        if samples < 1 or max_new_tokens < 1:
            raise InputError("--samples and --max-new-tokens must be >= 1")
        check_prompt_set(prompts)
        engine = Engine(load(model, backend="torch"))
        with Progress() as bar:
            task = bar.add_task("rectify bench", total=2 * samples * len(PROMPT_SETS[prompts][1]))
            result = run_rectify_bench(engine, rectifier, samples, max_new_tokens, output,
                                       "clm " + " ".join(shlex.quote(a) for a in sys.argv[1:]), words, threshold,
                                       progress=lambda n: bar.advance(task, n), style=prompts)
        table = Table("method", "undesired", "rate [Wilson 95%]", "perplexity", "tokens/s", "masked mass/step")
        for m, s in result["summary"].items():
            low, high = s["wilson95"]
            table.add_row(m, f"{s['undesired']}/{s['samples']}", f"{s['undesired_rate']:.3f} [{low:.3f}, {high:.3f}]",
                          f"{s['perplexity']:.2f}", f"{s['tokens_per_s']:.1f}", f"{s['masked_mass_per_step']:.4f}")
        Console().print(table)


def bench_guided(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    prompts: int = typer.Option(8, "--prompts", help="JSON-extraction prompts (8 distinct records, repeated beyond)."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", "-n"),
    methods: str = typer.Option("plain,lookup,recycling,adaptive", "--methods", help="plain first, then drafter names."),
    output: Path = typer.Option(Path("runs/guided"), "--output", "-o"),
):
    """JSON-schema-constrained decoding, plain vs drafters: tokens/s, MAT, mask cost, parity; JSON + table + plot."""
    import shlex
    import sys

    from clmkit.cli import user_errors
    from clmkit.guide.bench.grammar import run_guided_bench

    with user_errors():
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if not names or names[0] != "plain":
            raise InputError("--methods must start with plain (the reference the drafters are checked against)")
        if prompts < 1 or max_new_tokens < 1:
            raise InputError("--prompts and --max-new-tokens must be >= 1")
        run_guided_bench(model, prompts, max_new_tokens, output, "clm " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                         tuple(names))


def bench_momentum(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    per_category: int = typer.Option(20, "--per-category", help="Prompts per category (writing, roleplay, humanities, summarization; "
                                                                 "the first three have 10, so the default gives 50)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    methods: str = typer.Option("greedy,top-p,contrastive,momentum", "--methods"),
    batch: int = typer.Option(8, "--batch", help="Prompts of similar length decoded together in the quality pass."),
    timing_prompts: int = typer.Option(4, "--timing-prompts", help="Prompts decoded alone, methods interleaved, for tokens/s."),
    report_only: bool = typer.Option(False, "--report-only", help="Decode nothing: summarise the rows.jsonl in --output (a partial run)."),
    output: Path = typer.Option(Path("runs/momentum"), "--output", "-o", help="Folder; a run with rows.jsonl there resumes."),
):
    """Momentum decoding vs greedy, top-p and contrastive search: rep-2/3/4, diversity, perplexity, tokens/s."""
    import shlex
    import sys

    from clmkit.cli import user_errors
    from clmkit.guide.bench.momentum import METHODS, run_momentum_bench

    with user_errors():
        names = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = sorted(set(names) - set(METHODS))
        if unknown or not names:
            raise InputError(f"--methods takes a comma list of {', '.join(METHODS)}; unknown: {', '.join(unknown) or 'none given'}")
        if per_category < 1 or max_new_tokens < 1 or batch < 1 or timing_prompts < 0:
            raise InputError("--per-category, --max-new-tokens and --batch must be >= 1, --timing-prompts >= 0")
        run_momentum_bench(model, per_category, max_new_tokens, output, "clm " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                           tuple(names), batch=batch, timing_prompts=timing_prompts, report_only=report_only)


def plot_kl(result: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(result["n"], result["constrained"], "o-", label="constrained (mask + renormalise)")
    ax.plot(result["n"], result["aligned"], "s-", label="ASAp (grammar-aligned)")
    ax.axhline(result["kl_exact_vs_constrained_law"], color="grey", ls="--", lw=1, label="KL(exact || constrained law)")
    ax.set_xscale("log")
    ax.set_xlabel("samples N")
    ax.set_ylabel("KL(exact || empirical)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@guide_app.command("aligned-kl")
def aligned_kl(
    prompt: str = typer.Option(..., "--prompt", "-p"),
    choice: list[str] = typer.Option(..., "--choice", help="The finite language (repeatable)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    samples: int = typer.Option(300, "--samples", "-n"),
    temperature: float = typer.Option(1.0, "--temperature", "-t"),
    seed: int = typer.Option(0, "--seed"),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat"),
    output: Path = typer.Option(Path("runs/aligned-kl"), "--output", "-o", help="Folder for result.json and kl.png."),
):
    """KL(exact || empirical) vs N for constrained sampling and ASAp on a finite-language choice grammar
    (exact law by enumerating every tokenization and scoring it)."""
    import json
    import shlex
    import sys

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from clmkit.cli import user_errors
    from clmkit.engine import Engine
    from clmkit.guide.aligned import kl_curves
    from clmkit.models import load

    with user_errors():
        if samples < 1:
            raise InputError("--samples must be >= 1")
        engine = Engine(load(model))
        ids = engine.encode(prompt, chat)
        with Progress() as bar:
            task = bar.add_task("sampling (constrained, then ASAp)", total=2 * samples)
            result = kl_curves(engine, ids, samples, seed=seed, temperature=temperature,
                               progress=lambda: bar.advance(task), choice=list(choice))
        result["command"] = "clm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        result["model"] = engine.model.name
        output.mkdir(parents=True, exist_ok=True)
        (output / "result.json").write_text(json.dumps(result, indent=1))
        plot_kl(result, f"{engine.model.name}: {len(choice)}-way choice, {result['sequences']} token sequences", output / "kl.png")
        table = Table("N", "KL constrained", "KL ASAp")
        for n, a, b in zip(result["n"], result["constrained"], result["aligned"]):
            table.add_row(str(n), f"{a:.4f}", f"{b:.4f}")
        Console().print(table)
        Console().print(f"KL(exact || constrained law) = {result['kl_exact_vs_constrained_law']:.4f}; wrote {output}")
