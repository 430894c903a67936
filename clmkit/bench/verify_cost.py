"""`clm bench verify-cost`: what does one target forward over n draft nodes cost on this machine?

Speculative decoding pays off when (1 + expected accepted tokens) / cost(n) beats 1 / cost(1).
This measures cost(n) for a tree of n nodes after a realistic prefix (median of repeats), and, given
Token Recycling's measured rank-acceptance rates, the node budget that maximises expected tokens/s.

Every curve measured is also saved per machine (`$CLMKIT_CACHE/verify-cost/`, keyed by CPU model and
features, threads, backend, kernel option and model), where `clm bench speed` finds it to size the
drafters' trees without measuring again (`--retune` measures afresh).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from clmkit.backends.llamacpp import TorchThreads
from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.drafters.recycling import DEFAULT_ACCEPT_PROBS, DEFAULT_DEPTH
from clmkit.files import atomic_write
from clmkit.static_tree import TreeTemplate

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80)


def measure(model, sizes=SIZES, prefix: int = 256, repeats: int = 7) -> dict[int, float]:
    """Median seconds of one forward over an n-node tree (Token Recycling's shape) after `prefix` tokens,
    on the model's backend (torch or llama.cpp)."""
    seq = model.runner().sequence(prefix + max(sizes) + 1)
    g = torch.Generator().manual_seed(0)
    seq.prefill(torch.randint(100, model.vocab_size, (prefix,), generator=g).tolist())
    costs = {}
    try:
        for n in sizes:
            tree = TreeTemplate.optimal(DEFAULT_ACCEPT_PROBS, n, DEFAULT_DEPTH).tree
            tree = tree.with_tokens(torch.randint(100, model.vocab_size, (n,), generator=g))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                seq.tree(tree)
                times.append(time.perf_counter() - start)
                seq.truncate(prefix)
            costs[n] = statistics.median(times)
    finally:
        seq.close()
    return costs


def machine_key(model) -> dict:
    """What a verify-cost curve depends on: this CPU, the threads, the backend and kernel, the model."""
    cpu, flags = "unknown", []
    try:
        info = open("/proc/cpuinfo").read()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        present = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
        flags = sorted(present & {"avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"})
    except OSError:
        pass
    runner = model.runner()
    return {"cpu": cpu, "flags": flags, "threads": TorchThreads.available(), "backend": runner.name,
            "kernel": getattr(runner, "kernel_option", None), "model": model.name,
            "source": str(model.source)}


def cache_path(key: dict) -> Path:
    from clmkit.models import cache_dir

    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "verify-cost" / f"{key['backend']}-{key['model']}-{digest}.json"


def save_costs(key: dict, costs: dict[int, float], repeats: int) -> Path:
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"key": key, "repeats": repeats, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "seconds": {str(n): t for n, t in sorted(costs.items())}}, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def cached_costs(model, sizes, repeats: int = 3, refresh: bool = False) -> tuple[dict[int, float], str]:
    """(cost per size, where it came from): this machine's saved curve if it covers `sizes`, else measured
    now (and saved)."""
    key = machine_key(model)
    path = cache_path(key)
    if path.is_file() and not refresh:
        saved = json.loads(path.read_text())
        costs = {int(n): t for n, t in saved["seconds"].items()}
        if set(sizes) <= set(costs):
            return costs, f"cached {path} (measured {saved['measured']}; --retune to measure again)"
    costs = measure(model, sizes, repeats=repeats)
    return costs, f"measured now, saved to {save_costs(key, costs, repeats)}"


def best_budget(costs: dict[int, float], accept_probs=DEFAULT_ACCEPT_PROBS, max_depth: int = DEFAULT_DEPTH) -> list[dict]:
    rows = []
    for n, t in sorted(costs.items()):
        expected = 1 + TreeTemplate.optimal(accept_probs, n, max_depth).expected_accepted(accept_probs)
        rows.append({"nodes": n, "ms": t * 1000, "relative_cost": t / costs[min(costs)],
                     "expected_tokens_per_step": expected, "expected_speedup": expected * costs[min(costs)] / t})
    return rows


def run_verify_cost(model_name: str, output: Path | None = None, backend: str = "torch", kernel: str | None = None,
                    sizes=SIZES, repeats: int = 7) -> list[dict]:
    """`backend` may list several specs, comma-separated, as BACKEND or torch:KERNEL (e.g.
    "torch:hf,torch:onednn,llama.cpp"): they are then measured round-robin, one forward per size per
    round, so machine noise hits all alike; the median over the rounds is reported."""
    from clmkit.backends import load_for_cli

    specs = [b.strip() for b in backend.split(",") if b.strip()]
    models = {}
    for spec in specs:
        name, _, spec_kernel = spec.partition(":")
        models[spec] = load_for_cli(model_name, name, spec_kernel or kernel)
    times: dict[str, dict[int, list[float]]] = {spec: {n: [] for n in sizes} for spec in specs}
    for _ in range(repeats if len(specs) > 1 else 1):
        for spec, model in models.items():
            for n, t in measure(model, sizes, repeats=1 if len(specs) > 1 else repeats).items():
                times[spec][n].append(t)
    out = run_dir(output, "verify-cost")
    results, all_rows = {}, []
    for spec, model in models.items():
        save_costs(machine_key(model),
                   {n: statistics.median(ts) for n, ts in times[spec].items()}, repeats)
        runner = model.runner()
        label = runner.name + (f" ({runner.kernel} kernel)" if getattr(runner, "kernel", None) else "")
        rows = best_budget({n: statistics.median(ts) for n, ts in times[spec].items()})
        best = max(rows, key=lambda r: r["expected_speedup"])
        results[label] = {"rows": rows, "best_budget": best["nodes"]}
        all_rows += [{"backend": label, **r} for r in rows]
        print_table(f"verify cost of an n-node tree ({model.name}, {label}, {torch.get_num_threads()} threads)",
                    list(rows[0]), rows)
        print(f"{label}: best Token Recycling budget {best['nodes']} nodes (expected {best['expected_speedup']:.2f}x "
              "over plain decoding with the default rank-acceptance rates)")
    write_json(out / "verify_cost.json", {"model": model_name, "threads": torch.get_num_threads(), "repeats": repeats,
                                          "backends": results})
    (out / "verify_cost.md").write_text(markdown_table(list(all_rows[0]), all_rows))
    plot_costs(results, out / "verify_cost.png", f"{model_name}: cost of verifying n tokens, relative to n = 1")
    print(f"results: {out}/verify_cost.json, verify_cost.md, verify_cost.png")
    return all_rows


def plot_costs(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, r in results.items():
        ax.plot([x["nodes"] for x in r["rows"]], [x["relative_cost"] for x in r["rows"]], marker="o", label=label)
    ax.set_xlabel("tree nodes n")
    ax.set_ylabel("cost(n) / cost(1)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
