"""`clm bench momentum`: momentum decoding vs greedy, top-p sampling and contrastive search on open-ended
Spec-Bench prompts (writing, roleplay, humanities, summarization).

Metrics (SimCTG's definitions): rep-n = 1 - |unique n-grams| / |n-grams| of the output (n = 2, 3, 4),
diversity = prod_n (1 - rep-n); the target's own perplexity of each output given its prompt (MAUVE needs
a reference model and data out of reach offline); decode tokens/s.

Two passes, one command:
- quality: every prompt, every method; prompts of similar length decode together (at most `batch`
  rows, one batched forward per step - a row's tokens are those it gets alone, up to kernel rounding:
  clmkit/guide/bench/rows.py, contrastive.py); methods interleaved per group; rows appended to
  `rows.jsonl`, so a killed run resumes where it stopped;
- speed: the first `timing_prompts` prompts one at a time, methods interleaved per prompt, tokens/s.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.guide import make_guide
from clmkit.guide.bench import plot_bars
from clmkit.guide.bench.contrastive import contrastive_search_batch
from clmkit.guide.bench.rows import decode_rows, length_groups
from clmkit.models import load
from clmkit.sampling import Sampling

CATEGORIES = ["writing", "roleplay", "humanities", "summarization"]
METHODS = ("greedy", "top-p", "contrastive", "momentum")
CONTRASTIVE = dict(alpha=0.6, k=5)  # the paper's comparison setting
MAX_SLOTS = 8192  # padded prompt+output slots per group (contrastive search holds k copies of them)


def sampling_for(method: str, seed: int) -> Sampling:
    return Sampling(temperature=1.0, top_p=0.95, seed=seed) if method == "top-p" else Sampling()


def rep_n(tokens: list[int], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@torch.inference_mode()
def perplexity(module, prompt: list[int], output: list[int]) -> float:
    """exp(mean NLL) of the output tokens given the prompt, under the model that wrote them."""
    if not output:
        return float("nan")
    logits = module(input_ids=torch.tensor([prompt + output])).logits[0, len(prompt) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(output))
    return math.exp(float(nll))


def run_method(engine: Engine, method: str, ids: list[int], max_new_tokens: int, seed: int) -> tuple[list[int], float]:
    """One prompt alone (the speed pass): (tokens, seconds)."""
    model = engine.model
    start = time.perf_counter()
    if method == "contrastive":
        tokens = contrastive_search_batch(model.module, [ids], max_new_tokens, eos=model.eos_token_ids, **CONTRASTIVE)[0]
    else:
        guide = make_guide("momentum", model) if method == "momentum" else None
        tokens = engine.complete(ids, max_new_tokens=max_new_tokens, sampling=sampling_for(method, seed), guide=guide).token_ids
    return tokens, time.perf_counter() - start


def generate_group(engine: Engine, method: str, prompts: list[list[int]], max_new_tokens: int, seeds: list[int]) -> list[list[int]]:
    if method == "contrastive":
        return contrastive_search_batch(engine.model.module, prompts, max_new_tokens, eos=engine.model.eos_token_ids, **CONTRASTIVE)
    guides = [make_guide("momentum", engine.model) if method == "momentum" else None for _ in prompts]
    return decode_rows(engine, prompts, max_new_tokens, [sampling_for(method, s) for s in seeds], guides)


def quality_row(engine: Engine, prompt, ids: list[int], method: str, tokens: list[int]) -> dict:
    body = [t for t in tokens if t not in engine.model.eos_token_ids]
    return {"question_id": prompt.question_id, "category": prompt.category, "method": method, "tokens": len(tokens),
            **{f"rep-{n}": rep_n(body, n) for n in (2, 3, 4)},
            "perplexity": perplexity(engine.model.module, ids, body), "text": engine.model.tokenizer.decode(body)}


def run_momentum_bench(model_name: str, per_category: int, max_new_tokens: int, output: Path, command: str,
                       methods=METHODS, batch: int = 8, timing_prompts: int = 4, report_only: bool = False) -> dict:
    """Decode what `output/rows.jsonl` lacks (unless `report_only`), time `timing_prompts` prompts, and
    summarise the prompts every method has finished (all of them after a complete run)."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    engine = Engine(load(model_name, backend="torch"))  # contrastive search and perplexity read the torch module
    prompts = load_specbench(per_category, CATEGORIES)
    encoded = {p.question_id: engine.encode(p.text) for p in prompts}
    seed = {p.question_id: i for i, p in enumerate(prompts)}
    output.mkdir(parents=True, exist_ok=True)
    partial = output / "rows.jsonl"  # one line per (prompt, method): the resume point
    settings = {"model": engine.model.name, "max_new_tokens": max_new_tokens}
    done_rows = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    done_rows = [r for r in done_rows if r.get("settings") == settings]
    done = {(r["question_id"], r["method"]) for r in done_rows}
    groups = length_groups(prompts, lambda p: len(encoded[p.question_id]) + max_new_tokens, batch, MAX_SLOTS)
    timing = prompts[:timing_prompts]
    speed_rows = []
    with Progress() as bar:
        task = bar.add_task("momentum bench: quality", total=len(prompts) * len(methods), completed=len(done))
        with partial.open("a") as log:
            for group in [] if report_only else groups:
                for method in methods:  # interleaved: each group runs every method back to back
                    todo = [p for p in group if (p.question_id, method) not in done]
                    if not todo:
                        continue
                    outs = generate_group(engine, method, [encoded[p.question_id] for p in todo], max_new_tokens,
                                          [seed[p.question_id] for p in todo])
                    for p, tokens in zip(todo, outs):
                        row = {**quality_row(engine, p, encoded[p.question_id], method, tokens), "settings": settings}
                        done_rows.append(row)
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    bar.advance(task, len(todo))
        task = bar.add_task("momentum bench: speed", total=len(timing) * len(methods))
        for p in timing:
            for method in methods:
                tokens, seconds = run_method(engine, method, encoded[p.question_id], max_new_tokens, seed[p.question_id])
                speed_rows.append({"question_id": p.question_id, "method": method, "tokens": len(tokens), "seconds": seconds})
                bar.advance(task)
    # Paired comparison: only prompts every method has finished (a partial run reports fewer, and says so).
    have = {(r["question_id"], r["method"]) for r in done_rows}
    finished = {q for q in encoded if all((q, m) in have for m in methods)}
    done_rows = [r for r in done_rows if r["question_id"] in finished and r["method"] in methods]
    if not done_rows:
        raise InputError(f"no prompt has rows for every method in {output / 'rows.jsonl'} yet")
    summary = {}
    for method in methods:
        mine = [r for r in done_rows if r["method"] == method]
        s = {f"rep-{n}": sum(r[f"rep-{n}"] for r in mine) / len(mine) for n in (2, 3, 4)}
        s["diversity"] = sum(math.prod(1 - r[f"rep-{n}"] for n in (2, 3, 4)) for r in mine) / len(mine)
        ppl = [r["perplexity"] for r in mine if not math.isnan(r["perplexity"])]
        s["perplexity"] = sum(ppl) / max(1, len(ppl))
        s["mean_tokens"] = sum(r["tokens"] for r in mine) / len(mine)
        timed = [r for r in speed_rows if r["method"] == method]
        s["tokens_per_s"] = sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed) if timed else float("nan")
        s["prompts"] = len(mine)
        summary[method] = s
    base = summary.get("greedy", {}).get("tokens_per_s") or float("nan")
    for s in summary.values():
        s["speed_vs_greedy"] = s["tokens_per_s"] / base
    result = {"command": command, "model": engine.model.name, "prompts": len(finished), "of_prompts": len(prompts),
              "categories_done": {c: sum(1 for p in prompts if p.category == c and p.question_id in finished) for c in CATEGORIES},
              "max_new_tokens": max_new_tokens,
              "categories": CATEGORIES, "batch": batch, "timing_prompts": len(timing), "summary": summary,
              "speed_rows": speed_rows, "rows": done_rows}
    (output / "momentum.json").write_text(json.dumps(result, indent=1))
    table = Table("method", "rep-2", "rep-3", "rep-4", "diversity", "perplexity", "tokens/s", "vs greedy")
    for m, s in summary.items():
        table.add_row(m, *(f"{100 * s[k]:.1f}" for k in ("rep-2", "rep-3", "rep-4", "diversity")),
                      f"{s['perplexity']:.2f}", *((f"{s['tokens_per_s']:.1f}", f"{s['speed_vs_greedy']:.2f}x") if speed_rows
                                                   else ("not timed", "-")))
    Console().print(table)
    panels = [("diversity", "diversity (higher = less repetitive)"), ("perplexity", "target perplexity")]
    if speed_rows:
        panels.append(("speed_vs_greedy", f"speed vs greedy ({len(timing)} prompts, alone)"))
    plot_bars(summary, panels, output / "momentum.png",
              f"{engine.model.name}, {len(finished)} Spec-Bench prompts, {max_new_tokens} new tokens")
    return result
