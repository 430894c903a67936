"""`clm bench baseline`: clmkit's decode loop vs HF `generate`, interleaved in one process.

Both decode greedily from the same token ids; each prompt runs both back to back (alternating which
goes first) so machine noise hits both alike. Reported: tokens/s of each, their ratio, whether the
outputs are token-identical, and RSS over one long generation (the KV cache must be the only growth).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import torch
from rich.progress import Progress

from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine
from clmkit.models import load


def hf_generate(model, ids: list[int], max_new_tokens: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.module.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id or 0,
        )
    return out[0, len(ids) :].tolist()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def memory_profile(engine: Engine, new_tokens: int, every: int = 250) -> dict:
    """RSS while generating `new_tokens` (EOS ignored). The cache is preallocated, so RSS should stay flat."""
    proc = psutil.Process(os.getpid())
    samples = []
    produced = 0
    prompt = "Write a very long story about a lighthouse keeper."
    for chunk in engine.generate(prompt, max_new_tokens=new_tokens, ignore_eos=True):
        before = produced
        produced += len(chunk.token_ids)
        if produced // every != before // every or produced == 1:
            samples.append({"tokens": produced, "rss_mb": proc.memory_info().rss / 2**20})
    c = engine.model.config
    kv_mb = 2 * c.num_hidden_layers * c.num_key_value_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    kv_mb = kv_mb * 4 * (new_tokens + 64) / 2**20
    growth = samples[-1]["rss_mb"] - samples[0]["rss_mb"]
    return {"new_tokens": produced, "samples": samples, "rss_growth_mb": growth, "kv_cache_mb": kv_mb}


def run_baseline(
    model_name: str = "smollm2-135m",
    per_category: int = 2,
    max_new_tokens: int = 128,
    memory_tokens: int = 2000,
    output: Path | None = None,
) -> dict:
    model = load(model_name)
    engine = Engine(model)
    prompts = load_specbench(per_category)
    encoded = [engine.encode(p.text) for p in prompts]
    # Warm up both paths (first calls allocate and initialise kernels).
    hf_generate(model, encoded[0], 8)
    engine.complete(encoded[0], max_new_tokens=8)

    rows = []
    with Progress() as progress:
        task = progress.add_task("baseline", total=len(prompts))
        for i, (p, ids) in enumerate(zip(prompts, encoded)):
            runs = [("hf", lambda: hf_generate(model, ids, max_new_tokens)), ("clmkit", lambda: engine.complete(ids, max_new_tokens=max_new_tokens).token_ids)]
            results = {}
            for name, fn in runs if i % 2 == 0 else runs[::-1]:
                results[name] = timed(fn)
            (hf_ids, hf_s), (clm_ids, clm_s) = results["hf"], results["clmkit"]
            rows.append({
                "question_id": p.question_id, "category": p.category, "prompt_tokens": len(ids),
                "new_tokens": len(clm_ids), "hf_s": hf_s, "clmkit_s": clm_s,
                "hf_tok_s": len(hf_ids) / hf_s, "clmkit_tok_s": len(clm_ids) / clm_s,
                "same_output": hf_ids == clm_ids,
            })
            progress.advance(task)

    hf_tps = sum(len_ for len_ in (r["new_tokens"] for r in rows)) / sum(r["hf_s"] for r in rows)
    clm_tps = sum(r["new_tokens"] for r in rows) / sum(r["clmkit_s"] for r in rows)
    summary = {"hf_tok_s": hf_tps, "clmkit_tok_s": clm_tps, "ratio": clm_tps / hf_tps,
               "identical": sum(r["same_output"] for r in rows), "prompts": len(rows)}
    memory = memory_profile(engine, memory_tokens) if memory_tokens else None
    result = {
        "model": model.name, "max_new_tokens": max_new_tokens, "per_category": per_category,
        "torch_threads": torch.get_num_threads(), "summary": summary, "memory": memory, "rows": rows,
    }
    out = run_dir(output, "baseline")
    write_json(out / "baseline.json", result)
    columns = ["category", "prompt_tokens", "new_tokens", "hf_tok_s", "clmkit_tok_s", "same_output"]
    md = markdown_table(columns, rows) + "\n" + markdown_table(list(summary), [summary])
    if memory:
        md += "\n" + markdown_table(["tokens", "rss_mb"], memory["samples"])
    (out / "baseline.md").write_text(md)
    print_table(f"clmkit vs HF generate ({model.name}, greedy, {max_new_tokens} new tokens)", columns, rows)
    print_table("overall (tokens/s = all new tokens / all time)", list(summary), [summary])
    if memory:
        print_table("RSS during one long generation", ["tokens", "rss_mb"], memory["samples"])
        print(f"RSS growth over {memory['new_tokens']} tokens: {memory['rss_growth_mb']:.1f} MB "
              f"(the KV cache for that length is {memory['kv_cache_mb']:.1f} MB)")
    print(f"results: {out}/baseline.json, {out}/baseline.md")
    return result
