"""`clm bench baseline`: plain greedy decoding, every engine side by side, interleaved in one process.

Methods: `hf` (HF `generate`), `clmkit-torch` (clmkit's loop on the torch backend, kernel measured at
load), `llama-cpp-python` (llama-cpp-python's own high-level generation: the anchor for llama.cpp) and
`clmkit-llama.cpp` (clmkit's loop on the llama.cpp backend). All decode from the same token ids; each
prompt runs every method back to back (the order rotates) so machine noise hits all alike. Reported:
tokens/s, ratios to the first method, token identity with the first method, and RSS over one long
generation (the KV cache must be the only growth).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import psutil
import torch
from rich.progress import Progress

from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.models import load
from clmkit.sampling import Sampling


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
    growth = samples[-1]["rss_mb"] - samples[0]["rss_mb"]
    if engine.backend.name != "torch":  # llama.cpp allocates its KV cache up front: nothing to compare with
        return {"new_tokens": produced, "samples": samples, "rss_growth_mb": growth}
    c = engine.model.config
    kv_mb = 2 * c.num_hidden_layers * c.num_key_value_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
    kv_mb = kv_mb * 4 * (new_tokens + 64) / 2**20
    return {"new_tokens": produced, "samples": samples, "rss_growth_mb": growth, "kv_cache_mb": kv_mb}


BASELINE_METHODS = ("hf", "clmkit-torch", "llama-cpp-python", "clmkit-llama.cpp")


def baseline_runners(model_name: str, methods: list[str], kernel: str | None) -> tuple[dict, Engine]:
    """name -> fn(ids, max_new_tokens) -> token ids; plus the clmkit engine used for encoding/memory."""
    from clmkit.bench.speed import LlamaCppPythonMethod

    unknown = [m for m in methods if m not in BASELINE_METHODS]
    if unknown or not methods:
        raise InputError(f"unknown baseline method(s) {', '.join(unknown) or '(none)'}; known: {', '.join(BASELINE_METHODS)}")
    runners, engine = {}, None
    if "hf" in methods or "clmkit-torch" in methods:
        model = load(model_name)
        if "hf" in methods:
            runners["hf"] = lambda ids, n: hf_generate(model, ids, n)
        if "clmkit-torch" in methods:
            fast = load(model_name, backend="torch", kernel=kernel or "auto")
            engine = Engine(fast)
            runners["clmkit-torch"] = lambda ids, n, e=engine: e.complete(ids, max_new_tokens=n).token_ids
        engine = engine or Engine(model)
    if "llama-cpp-python" in methods or "clmkit-llama.cpp" in methods:
        lmodel = load(model_name, backend="llama.cpp")
        if "llama-cpp-python" in methods:
            own = LlamaCppPythonMethod("llama-cpp-python", lmodel.source, Sampling())
            runners["llama-cpp-python"] = lambda ids, n: own(ids, n).tokens
        lengine = Engine(lmodel)
        if "clmkit-llama.cpp" in methods:
            runners["clmkit-llama.cpp"] = lambda ids, n: lengine.complete(ids, max_new_tokens=n).token_ids
        engine = engine or lengine
    return {m: runners[m] for m in methods}, engine


def run_baseline(
    model_name: str = "smollm2-135m",
    per_category: int = 2,
    max_new_tokens: int = 128,
    memory_tokens: int = 2000,
    output: Path | None = None,
    methods: list[str] | None = None,
    kernel: str | None = None,
    limit: int | None = None,
) -> dict:
    """Every method greedy on the same token ids, interleaved per prompt (the order rotates)."""
    methods = list(methods or BASELINE_METHODS)
    if importlib.util.find_spec("llama_cpp") is None:
        dropped = [m for m in methods if "llama" in m]
        methods = [m for m in methods if "llama" not in m]
        if dropped:
            print(f"llama-cpp-python is not installed: skipping {', '.join(dropped)}")
    runners, engine = baseline_runners(model_name, methods, kernel)
    prompts = load_specbench(per_category)[:limit]
    encoded = [engine.encode(p.text) for p in prompts]
    for fn in runners.values():  # warm-up: first calls allocate and initialise kernels (not measured)
        fn(encoded[0], 8)

    rows = []
    reference = methods[0]
    with Progress() as progress:
        task = progress.add_task("baseline", total=len(prompts) * len(methods))
        for i, (p, ids) in enumerate(zip(prompts, encoded)):
            order = methods[i % len(methods):] + methods[: i % len(methods)]
            results = {}
            for name in order:
                progress.update(task, description=f"{p.category} {name}")
                results[name] = timed(lambda: runners[name](ids, max_new_tokens))
                progress.advance(task)
            row = {"question_id": p.question_id, "category": p.category, "prompt_tokens": len(ids)}
            for name, (out, secs) in results.items():
                row[f"{name}_tokens"], row[f"{name}_s"] = len(out), secs
                row[f"{name}_tok_s"] = len(out) / secs
                row[f"{name}_same"] = out == results[reference][0]
            rows.append(row)

    summary = []
    for name in methods:
        tps = sum(r[f"{name}_tokens"] for r in rows) / sum(r[f"{name}_s"] for r in rows)
        summary.append({"method": name, "tok_s": tps, "identical_to_" + reference: sum(r[f"{name}_same"] for r in rows)})
    for r in summary:
        r["vs_" + reference] = r["tok_s"] / summary[0]["tok_s"]
    memory = memory_profile(engine, memory_tokens) if memory_tokens else None
    result = {
        "model": model_name, "max_new_tokens": max_new_tokens, "per_category": per_category, "methods": methods,
        "kernel": getattr(engine.backend, "kernel", None), "torch_threads": torch.get_num_threads(),
        "summary": summary, "memory": memory, "rows": rows,
    }
    out = run_dir(output, "baseline")
    write_json(out / "baseline.json", result)
    columns = ["category", "prompt_tokens"] + [f"{m}_tok_s" for m in methods]
    sum_cols = list(summary[0])
    md = markdown_table(columns, rows) + "\n" + markdown_table(sum_cols, summary)
    if memory:
        md += "\n" + markdown_table(["tokens", "rss_mb"], memory["samples"])
    (out / "baseline.md").write_text(md)
    plot_baseline(summary, out / "baseline.png", f"{model_name}, greedy, {max_new_tokens} new tokens, {len(prompts)} prompts")
    print_table(f"greedy decoding ({model_name}, {max_new_tokens} new tokens): tokens/s per prompt", columns, rows)
    print_table("overall (tokens/s = all new tokens / all time)", sum_cols, summary)
    if memory:
        print_table(f"RSS during one long generation ({engine.backend.name})", ["tokens", "rss_mb"], memory["samples"])
        print(f"RSS growth over {memory['new_tokens']} tokens: {memory['rss_growth_mb']:.1f} MB")
    print(f"results: {out}/baseline.json, baseline.md, baseline.png")
    return result


def plot_baseline(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([r["method"] for r in summary], [r["tok_s"] for r in summary],
                  color=["#999" if not r["method"].startswith("clmkit") else "#2a7" for r in summary])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("tokens/s (greedy)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
