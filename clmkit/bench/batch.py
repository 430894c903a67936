"""`clm bench batch`: total tokens/s of batched greedy decoding, B rows at once vs one at a time.

For each B the same B prompts run through `Engine.generate_batch` (one forward per step for all rows)
and, interleaved in the same run, one after another through `Engine.complete` (B = 1); reported are
total new tokens / wall time of each, their ratio, and how many rows were token-identical.

Every row that is not identical is audited with the near-tie rule (clmkit.parity): at the first
position where the batched row leaves its unbatched run, the unbatched run's top-2 logit gap is
compared with the backend's stated bound (`backend.near_tie`); each case is printed and counted, and a
divergence above the bound is reported as DIVERGED.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import Progress

from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine
from clmkit.parity import first_divergence


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
            audit = [audit_row(engine.backend, p, a, c) for p, a, c in zip(prompts, one, many)]
            for i, d in enumerate(audit):
                if d is not None:
                    progress.console.print(f"[parity] B={b} row {i}: {d['kind']} at position {d['position']}: unbatched "
                                           f"{d['reference_token']}, batched {d['got_token']}, top-2 gap {d['top2_gap']:.3g} "
                                           f"(bound {engine.backend.near_tie:g})", markup=False)
            found = [d for d in audit if d is not None]
            rows.append({"B": b, "sequential_tok_s": sum(len(t) for t in one) / one_s, "batched_tok_s": tokens / many_s,
                         "speedup": one_s / many_s, "identical_rows": f"{sum(a == c for a, c in zip(one, many))}/{b}",
                         "near_ties": sum(d["kind"] == "near-tie" for d in found),
                         "diverged": sum(d["kind"] == "DIVERGED" for d in found),
                         "max_gap": max((d["top2_gap"] for d in found), default=None), "divergences": audit})
            progress.advance(task)
    out = run_dir(output, "batch")
    label = engine.backend.name + (f" ({engine.backend.kernel})" if getattr(engine.backend, "kernel", None) else "")
    write_json(out / "batch.json", {"model": model_name, "backend": label, "max_new_tokens": max_new_tokens,
                                    "threads": torch.get_num_threads(), "rows": rows})
    cols = [c for c in rows[0] if c != "divergences"]
    (out / "batch.md").write_text(markdown_table(cols, rows))
    print_table(f"batched greedy decoding ({model_name}, {label}, {max_new_tokens} new tokens per row)", cols, rows)
    ties, bad = sum(r["near_ties"] for r in rows), sum(r["diverged"] for r in rows)
    print(f"parity: {ties} near-tie(s) below the bound {engine.backend.near_tie:g} and {bad} divergence(s) above it, "
          f"over {sum(r['B'] for r in rows)} rows (each printed above)")
    print(f"results: {out}/batch.json")
    return rows


def audit_row(backend, prompt: list[int], unbatched: list[int], batched: list[int]) -> dict | None:
    """None if the batched row equals its unbatched run, else where it leaves it and how close a tie it was."""
    d = first_divergence(backend, prompt, unbatched, batched)
    if d is None:
        return None
    kind = "near-tie" if d.near_tie else "DIVERGED"  # by the backend's stated bound
    return {"kind": kind, "position": d.index, "reference_token": d.reference_token, "got_token": d.got_token,
            "top2_gap": d.top2_gap}
