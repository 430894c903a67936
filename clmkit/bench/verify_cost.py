"""`clm bench verify-cost`: what does one target forward over n draft nodes cost on this machine?

Speculative decoding pays off when (1 + expected accepted tokens) / cost(n) beats 1 / cost(1).
This measures cost(n) for a tree of n nodes after a realistic prefix (median of repeats), and, given
Token Recycling's measured rank-acceptance rates, the node budget that maximises expected tokens/s.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.drafters.recycling import DEFAULT_ACCEPT_PROBS, DEFAULT_DEPTH
from clmkit.hf_adapter import Forward, new_cache
from clmkit.models import load
from clmkit.static_tree import TreeTemplate

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64, 80)


def measure(model, sizes=SIZES, prefix: int = 256, repeats: int = 7) -> dict[int, float]:
    """Median seconds of one forward over an n-node tree (Token Recycling's shape) after `prefix` tokens."""
    fwd = Forward(model.module)
    cache = new_cache(model.module, prefix + max(sizes) + 1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.vocab_size, (1, prefix), generator=g)
    costs = {}
    with torch.inference_mode():
        fwd(ids, torch.arange(prefix)[None], cache)
        for n in sizes:
            tree = TreeTemplate.optimal(DEFAULT_ACCEPT_PROBS, n, DEFAULT_DEPTH).tree
            tree = tree.with_tokens(torch.randint(100, model.vocab_size, (n,), generator=g))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fwd.tree(tree, cache)
                times.append(time.perf_counter() - start)
                cache.crop_to(prefix)
            costs[n] = statistics.median(times)
    return costs


def best_budget(costs: dict[int, float], accept_probs=DEFAULT_ACCEPT_PROBS, max_depth: int = DEFAULT_DEPTH) -> list[dict]:
    rows = []
    for n, t in sorted(costs.items()):
        expected = 1 + TreeTemplate.optimal(accept_probs, n, max_depth).expected_accepted(accept_probs)
        rows.append({"nodes": n, "ms": t * 1000, "relative_cost": t / costs[min(costs)],
                     "expected_tokens_per_step": expected, "expected_speedup": expected * costs[min(costs)] / t})
    return rows


def run_verify_cost(model_name: str, output: Path | None = None) -> list[dict]:
    model = load(model_name)
    rows = best_budget(measure(model))
    best = max(rows, key=lambda r: r["expected_speedup"])
    out = run_dir(output, "verify-cost")
    write_json(out / "verify_cost.json", {"model": model.name, "threads": torch.get_num_threads(), "rows": rows,
                                          "best_budget": best["nodes"]})
    cols = list(rows[0])
    (out / "verify_cost.md").write_text(markdown_table(cols, rows))
    print_table(f"verify cost of an n-node tree ({model.name}, {torch.get_num_threads()} threads)", cols, rows)
    print(f"best Token Recycling budget here: {best['nodes']} nodes (expected {best['expected_speedup']:.2f}x over "
          f"plain decoding with the default rank-acceptance rates); results: {out}")
    return rows
