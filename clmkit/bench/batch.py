"""`clm bench batch`: total tokens/s of batched greedy decoding, B rows at once vs one at a time.

For each B the same B prompts run through `Engine.generate_batch` (one forward per step for all rows)
and, interleaved in the same run, one after another through `Engine.complete` (B = 1); reported are
total new tokens / wall time of each, their ratio, and how many rows were token-identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import Progress

from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine


def run_batch_bench(model_name: str, backend: str = "torch", kernel: str | None = None, sizes=(1, 4, 8),
                    max_new_tokens: int = 32, output: Path | None = None) -> list[dict]:
    from clmkit.backends import load_for_cli

    engine = Engine(load_for_cli(model_name, backend, kernel))
    prompts = [engine.encode(p.text) for p in load_specbench(1)][: max(sizes)]
    opts = dict(max_new_tokens=max_new_tokens, ignore_eos=True)
    engine.complete_batch(prompts[:2], max_new_tokens=4)  # warm-up
    rows = []
    with Progress() as progress:
        task = progress.add_task("batch", total=len(sizes))
        for b in sizes:
            start = time.perf_counter()
            one = [engine.complete(p, **opts).token_ids for p in prompts[:b]]
            one_s = time.perf_counter() - start
            start = time.perf_counter()
            many = [c.token_ids for c in engine.complete_batch(prompts[:b], **opts)]
            many_s = time.perf_counter() - start
            tokens = sum(len(t) for t in many)
            rows.append({"B": b, "sequential_tok_s": sum(len(t) for t in one) / one_s, "batched_tok_s": tokens / many_s,
                         "speedup": one_s / many_s, "identical_rows": f"{sum(a == c for a, c in zip(one, many))}/{b}"})
            progress.advance(task)
    out = run_dir(output, "batch")
    label = engine.backend.name + (f" ({engine.backend.kernel})" if getattr(engine.backend, "kernel", None) else "")
    write_json(out / "batch.json", {"model": model_name, "backend": label, "max_new_tokens": max_new_tokens,
                                    "threads": torch.get_num_threads(), "rows": rows})
    cols = list(rows[0])
    (out / "batch.md").write_text(markdown_table(cols, rows))
    print_table(f"batched greedy decoding ({model_name}, {label}, {max_new_tokens} new tokens per row)", cols, rows)
    print(f"results: {out}/batch.json")
    return rows
