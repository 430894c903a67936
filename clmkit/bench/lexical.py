"""`clm eval lexical`: what Lexical Unit Decoding's own (lossy) mode costs in quality, as the paper
reports it, next to the lossless `lexical` drafter on the same prompts.

For each prompt of the fixed Spec-Bench sample (the one `clm bench speed` uses), greedy:
  original   the original model, one token per forward: the reference text
  lora-ar    the LoRA fine-tuned model, one token per forward (what fine-tuning alone changed)
  lud        the fine-tuned model decoding whole lexical units per forward (the paper's decoder)
  lossless   the `lexical` drafter: units from the fine-tuned model, verified by the original
Scores against the original's output: exact match, ROUGE-L F1 on tokens, the share of the output
before the first difference; and new tokens per forward of the model that decides the text, the
prefill included (the original target's forwards for `lossless`; its MAT over decode steps alone is
reported too).
Speed is not measured here (timing is `clm bench speed --methods vanilla,lexical`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress

from clmkit.bench.report import markdown_table, print_table, run_dir, write_json

MODES = ("original", "lora-ar", "lud", "lossless")


def rouge_l(candidate: list[int], reference: list[int]) -> float:
    """ROUGE-L F1 over tokens: from the longest common subsequence (dynamic programming, O(n m))."""
    if not candidate or not reference:
        return float(candidate == reference)
    prev = [0] * (len(reference) + 1)
    for c in candidate:
        row = [0]
        for j, r in enumerate(reference):
            row.append(prev[j] + 1 if c == r else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def shared_prefix(candidate: list[int], reference: list[int]) -> float:
    """Share of the reference reproduced before the first differing token."""
    n = next((i for i, (a, b) in enumerate(zip(candidate, reference)) if a != b), min(len(candidate), len(reference)))
    return n / max(1, len(reference))


def scores(candidate: list[int], reference: list[int]) -> dict:
    return {"exact": candidate == reference, "rouge_l": rouge_l(candidate, reference),
            "prefix": shared_prefix(candidate, reference)}


def unit_statistics(cache, parts, alpha: float, max_unit: int) -> dict:
    """Lexical units of the held-back sequences of a feature cache, labelled as training labels them:
    how many response tokens lie in multi-token units, and the tokens per forward a decoder would reach
    if it predicted every unit perfectly (response tokens / units, single tokens counted as units)."""
    import torch

    from clmkit.drafters.lexical import lexical_units

    tokens = units = in_units = 0
    lengths: dict[int, int] = {}
    for offset, plen, n in cache.eval_seqs:
        ids = torch.from_numpy(cache.tokens[offset:offset + n].astype("int64"))
        with torch.no_grad():
            logp = parts.logits(torch.from_numpy(cache.hidden[offset:offset + n - 1].astype("float32"))).log_softmax(-1)
        conf = [1.0] + logp.gather(-1, ids[1:, None])[:, 0].exp().tolist()
        usable = [i >= plen for i in range(n)]
        found = lexical_units(conf, usable, alpha, max_unit)
        tokens += n - plen
        in_units += sum(k for _, k in found)
        units += len(found) + (n - plen) - sum(k for _, k in found)
        for _, k in found:
            lengths[k] = lengths.get(k, 0) + 1
    return {"sequences": len(cache.eval_seqs), "response_tokens": tokens, "share_in_units": in_units / max(1, tokens),
            "oracle_tokens_per_forward": tokens / max(1, units), "unit_lengths": dict(sorted(lengths.items()))}


def original_outputs(model, prompts, encoded: list[list[int]], max_new_tokens: int, path: Path | None) -> list[list[int]]:
    """The original model's greedy outputs, the reference every mode is scored against. With `path`, kept
    in that JSON file (keyed by model, question, prompt length and budget) and reused by later runs."""
    import json

    from clmkit.engine import Engine

    engine = Engine(model)
    known = json.loads(path.read_text()) if path is not None and path.exists() else {}
    outputs = []
    with Progress() as progress:
        task = progress.add_task("original greedy", total=len(prompts))
        for p, ids in zip(prompts, encoded):
            key = f"{model.name}/{p.question_id}/{len(ids)}/{max_new_tokens}"
            if key not in known:
                known[key] = engine.complete(ids, max_new_tokens=max_new_tokens).token_ids
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_json(path, known)
            outputs.append(known[key])
            progress.advance(task)
    return outputs


def eval_prompts(model, per_category: int, max_new_tokens: int, max_unit: int):
    """The speed benchmark's fixed Spec-Bench sample, encoded (chat template), cut to fit the context."""
    from clmkit.bench.specbench import load_specbench
    from clmkit.engine import Engine

    prompts = load_specbench(per_category)
    keep = model.context_length - max_new_tokens - max_unit - 1
    return prompts, [Engine(model).encode(p.text)[-keep:] for p in prompts]


def run_lexical_eval(model_name: str, checkpoint: Path | None, per_category: int, max_new_tokens: int,
                     alpha: float | None, max_unit: int | None, output: Path | None, command: str,
                     plot: Path | None = None, cache: Path | None = None, reference: Path | None = None) -> dict:
    from clmkit.drafters import make_drafter
    from clmkit.drafters.lexical import decode_units
    from clmkit.engine import Engine
    from clmkit.models import load

    model = load(model_name)
    engine = Engine(model)
    drafter = make_drafter("lexical", model, checkpoint=None if checkpoint is None else str(checkpoint.resolve()),
                           alpha=alpha, budget=max_unit)
    alpha, max_unit = drafter.alpha, drafter.budget
    units = None
    if cache is not None:  # the units training labels, on held-back self-distilled answers
        from clmkit.train.features import FeatureCache
        from clmkit.train.loop import TargetParts

        features = FeatureCache(cache)
        features.check_model(model)
        units = unit_statistics(features, TargetParts.of(model.module), alpha, max_unit)
        print(f"units in {units['sequences']} held-back answers (alpha {alpha}, at most {max_unit} tokens): "
              f"{units['share_in_units']:.1%} of {units['response_tokens']} response tokens lie in multi-token units; "
              f"perfect unit prediction = {units['oracle_tokens_per_forward']:.2f} tokens/forward; lengths {units['unit_lengths']}")
    prompts, encoded = eval_prompts(model, per_category, max_new_tokens, max_unit)
    references = original_outputs(model, prompts, encoded, max_new_tokens, reference)
    eos = model.eos_token_ids
    out = run_dir(output, "lexical")
    rows = []
    with Progress() as progress:
        task = progress.add_task("lexical eval", total=len(prompts))
        for p, ids, reference in zip(prompts, encoded, references):
            lora_ar, lora_fw = decode_units(drafter.lm, ids, max_new_tokens, eos, alpha, 1)
            lud, lud_fw = decode_units(drafter.lm, ids, max_new_tokens, eos, alpha, max_unit)
            fast = engine.complete(ids, max_new_tokens=max_new_tokens, drafter=drafter)
            row = {"category": p.category, "question_id": p.question_id, "tokens": len(reference)}
            for mode, tokens, forwards in (("lora-ar", lora_ar, lora_fw), ("lud", lud, lud_fw),
                                           ("lossless", fast.token_ids, fast.stats.target_forwards + 1)):
                row[mode] = {**scores(tokens, reference), "new_tokens": len(tokens), "forwards": forwards}
            row["lossless"]["mat"] = fast.stats.mean_accepted
            rows.append(row)
            write_json(out / "lexical.partial.json", {"command": command, "prompts": rows})  # survives an interruption
            progress.advance(task)
    summary = []
    for mode in MODES[1:]:
        tokens = sum(r[mode]["new_tokens"] for r in rows)
        forwards = sum(r[mode]["forwards"] for r in rows)
        summary.append({"mode": mode, "exact match": f"{sum(r[mode]['exact'] for r in rows)}/{len(rows)}",
                        "ROUGE-L": sum(r[mode]["rouge_l"] for r in rows) / len(rows),
                        "shared prefix": sum(r[mode]["prefix"] for r in rows) / len(rows),
                        "tokens/forward": tokens / max(1, forwards)})
    # MAT as `clm bench speed` reports it: decode-step tokens per target forward (the prefill's token excluded)
    summary[-1]["MAT"] = (sum(r["lossless"]["new_tokens"] - 1 for r in rows)
                          / max(1, sum(r["lossless"]["forwards"] - 1 for r in rows)))
    columns = ["mode", "exact match", "ROUGE-L", "shared prefix", "tokens/forward", "MAT"]
    payload = {"model": model.name, "checkpoint": str(checkpoint) if checkpoint else "shipped", "alpha": alpha,
               "max_unit": max_unit, "per_category": per_category, "max_new_tokens": max_new_tokens,
               "command": command, "units": units, "summary": summary, "prompts": rows}
    write_json(out / "lexical.json", payload)
    (out / "lexical.md").write_text(markdown_table(columns, summary))
    print_table(f"lexical units vs the original's greedy output ({len(rows)} prompts, {model.name})", columns, summary)
    if plot is not None:
        plot_summary(summary, plot, f"{model.name}: LUD (alpha={alpha}, m={max_unit}) vs original greedy, {len(rows)} prompts")
    return payload


def plot_summary(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [s["mode"] for s in summary]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.bar(modes, [s["ROUGE-L"] for s in summary], color="tab:blue")
    ax1.set_ylabel("ROUGE-L vs original greedy")
    ax1.set_ylim(0, 1.05)
    ax2.bar(modes, [s["tokens/forward"] for s in summary], color="tab:orange")
    ax2.set_ylabel("tokens per forward")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(eval_app) -> None:
    """`clm eval lexical` (mounted on the eval group by clmkit/cli.py)."""

    @eval_app.command("lexical")
    def eval_lexical(
        ctx: typer.Context,
        model: str = typer.Option("smollm2-135m", "--model", "-m"),
        checkpoint: Optional[Path] = typer.Option(None, "--draft-checkpoint", help="A `clm train lexical` adapter instead of the shipped one."),
        per_category: int = typer.Option(1, "--per-category", help="Spec-Bench questions per category (the speed benchmark's fixed sample)."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n"),
        alpha: Optional[float] = typer.Option(None, "--alpha", help="Confidence that continues a unit (default: the adapter's)."),
        max_unit: Optional[int] = typer.Option(None, "--max-unit", help="Tokens per forward at most (default: the adapter's)."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results folder (default runs/lexical-TIME)."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a PNG of the summary here."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Also count the lexical units of this feature cache's held-back answers (clm train data)."),
        reference: Optional[Path] = typer.Option(None, "--reference", help="JSON file keeping the original's greedy outputs: reused if present, written if not."),
    ):
        """Lexical Unit Decoding's lossy mode (the paper's) vs the original model: quality and tokens per forward."""
        from clmkit.cli import user_errors
        from clmkit.errors import InputError
        from clmkit.train.cli import command_line

        with user_errors():
            if per_category < 1 or max_new_tokens < 1:
                raise InputError("--per-category and --max-new-tokens must be >= 1")
            run_lexical_eval(model, checkpoint, per_category, max_new_tokens, alpha, max_unit, output,
                             command_line(ctx), plot, cache, reference)
