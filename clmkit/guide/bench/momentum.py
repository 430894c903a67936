"""`clm bench momentum`: momentum decoding vs greedy, top-p sampling and contrastive search on open-ended
Spec-Bench prompts (writing, roleplay, humanities, summarization), methods interleaved per prompt.

Metrics (SimCTG's definitions): rep-n = 1 - |unique n-grams| / |n-grams| of the output (n = 2, 3, 4),
diversity = prod_n (1 - rep-n); the target's own perplexity of each output given its prompt (MAUVE needs
a reference model and data out of reach offline); decode tokens/s.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine
from clmkit.guide import make_guide
from clmkit.guide.bench import plot_bars
from clmkit.guide.bench.contrastive import contrastive_search
from clmkit.models import load
from clmkit.sampling import Sampling

CATEGORIES = ["writing", "roleplay", "humanities", "summarization"]
METHODS = ("greedy", "top-p", "contrastive", "momentum")


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
    model = engine.model
    start = time.perf_counter()
    if method == "contrastive":  # the paper's comparison setting: alpha 0.6, k 5
        tokens = contrastive_search(model.module, ids, max_new_tokens, alpha=0.6, k=5, eos=model.eos_token_ids)
    elif method == "momentum":
        tokens = engine.complete(ids, max_new_tokens=max_new_tokens, guide=make_guide("momentum", model)).token_ids
    elif method == "top-p":
        tokens = engine.complete(ids, max_new_tokens=max_new_tokens, sampling=Sampling(temperature=1.0, top_p=0.95, seed=seed)).token_ids
    else:
        tokens = engine.complete(ids, max_new_tokens=max_new_tokens).token_ids
    return tokens, time.perf_counter() - start


def run_momentum_bench(model_name: str, per_category: int, max_new_tokens: int, output: Path, command: str,
                       methods=METHODS) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    engine = Engine(load(model_name))
    prompts = load_specbench(per_category, CATEGORIES)
    rows = []
    with Progress() as bar:
        task = bar.add_task("momentum bench", total=len(prompts) * len(methods))
        for i, p in enumerate(prompts):
            ids = engine.encode(p.text)
            for method in methods:  # interleaved: each prompt runs every method back to back
                tokens, seconds = run_method(engine, method, ids, max_new_tokens, seed=i)
                body = [t for t in tokens if t not in engine.model.eos_token_ids]
                rows.append({"question_id": p.question_id, "category": p.category, "method": method,
                             "tokens": len(tokens), "seconds": seconds,
                             **{f"rep-{n}": rep_n(body, n) for n in (2, 3, 4)},
                             "perplexity": perplexity(engine.model.module, ids, body),
                             "text": engine.model.tokenizer.decode(body)})
                bar.advance(task)
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        s = {f"rep-{n}": sum(r[f"rep-{n}"] for r in mine) / len(mine) for n in (2, 3, 4)}
        s["diversity"] = sum(math.prod(1 - r[f"rep-{n}"] for n in (2, 3, 4)) for r in mine) / len(mine)
        s["perplexity"] = sum(r["perplexity"] for r in mine) / len(mine)
        s["tokens_per_s"] = sum(r["tokens"] for r in mine) / sum(r["seconds"] for r in mine)
        summary[method] = s
    base = summary.get("greedy", {}).get("tokens_per_s") or 1.0
    for s in summary.values():
        s["speed_vs_greedy"] = s["tokens_per_s"] / base
    result = {"command": command, "model": engine.model.name, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
              "categories": CATEGORIES, "summary": summary, "rows": rows}
    output.mkdir(parents=True, exist_ok=True)
    (output / "momentum.json").write_text(json.dumps(result, indent=1))
    table = Table("method", "rep-2", "rep-3", "rep-4", "diversity", "perplexity", "tokens/s", "vs greedy")
    for m, s in summary.items():
        table.add_row(m, *(f"{100 * s[k]:.1f}" for k in ("rep-2", "rep-3", "rep-4", "diversity")),
                      f"{s['perplexity']:.2f}", f"{s['tokens_per_s']:.1f}", f"{s['speed_vs_greedy']:.2f}x")
    Console().print(table)
    plot_bars(summary, [("diversity", "diversity (higher = less repetitive)"), ("perplexity", "target perplexity"),
                        ("tokens_per_s", "tokens/s")],
              output / "momentum.png", f"{engine.model.name}, {len(prompts)} Spec-Bench prompts, {max_new_tokens} tokens")
    return result
