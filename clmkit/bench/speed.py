"""`clm bench speed`: Spec-Bench-style speed comparison, every method interleaved in one process.

For each prompt every method runs back to back (the order rotates from prompt to prompt), so noise
on this shared machine hits all methods alike. Reported per category and overall: tokens/s, speedup
over HF `generate` (ratio of tokens/s on the same prompts), mean accepted tokens per target forward
(MAT), acceptance rate, and a check that the output equals clmkit's plain decoding (greedy).

Reference methods: `hf` (generate), `hf-lookup` (generate with prompt_lookup_num_tokens),
`hf-assisted` (generate with an assistant: the --draft-model, or HF's own early-exit self-draft
`assistant_early_exit=N` for `self:N`). clmkit methods: `vanilla` (no drafter) and every drafter.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress

from clmkit.backends.llamacpp import TorchThreads
from clmkit.bench.report import markdown_table, print_table, run_dir, write_json
from clmkit.bench.specbench import load_specbench
from clmkit.drafters import available, make_drafter, takes_draft_model
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.models import load
from clmkit.parity import first_divergence
from clmkit.sampling import Sampling

HF_METHODS = ("hf", "hf-lookup", "hf-assisted")
LLAMA_CPP_METHODS = ("llama-cpp-python", "llama-cpp-python-lookup")  # the field's engine, its own generation
TUNE_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


@dataclass
class Run:
    tokens: list[int]
    seconds: float
    target_forwards: int | None = None
    mean_accepted: float | None = None
    draft_tokens: int | None = None
    accepted_tokens: int | None = None


class HFMethod:
    def __init__(self, name: str, model, draft_model: str | None, sampling: Sampling):
        self.name, self.model, self.sampling = name, model, sampling
        self.kwargs = {}
        if name == "hf-lookup":
            self.kwargs = {"prompt_lookup_num_tokens": 10}
        elif name == "hf-assisted":
            if draft_model is None:
                raise InputError("hf-assisted needs --draft-model (a model or self:N)")
            if draft_model.startswith("self:"):
                self.kwargs = {"assistant_early_exit": int(draft_model.split(":", 1)[1])}
            else:
                self.kwargs = {"assistant_model": load(draft_model).module}

    def __call__(self, ids: list[int], max_new_tokens: int) -> Run:
        x = torch.tensor([ids])
        s = self.sampling
        sample = {"do_sample": False} if s.greedy else {
            "do_sample": True, "temperature": s.temperature, "top_k": s.top_k or None, "top_p": s.top_p}
        if not s.greedy and s.seed is not None:
            torch.manual_seed(s.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.module.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                             pad_token_id=self.model.tokenizer.pad_token_id or 0, **sample, **self.kwargs)
        return Run(out[0, len(ids):].tolist(), time.perf_counter() - start)


class LlamaCppPythonMethod:
    """llama-cpp-python's own high-level greedy generation (and its prompt-lookup decoding) on the GGUF."""

    def __init__(self, name: str, gguf: Path, sampling: Sampling):
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        if not sampling.greedy:
            raise InputError(f"{name} is run greedy only (its sampler chain differs from clmkit's)")
        draft = LlamaPromptLookupDecoding(num_pred_tokens=10) if name.endswith("-lookup") else None
        threads = TorchThreads.available()  # the same threads as clmkit's llama.cpp backend, for prefill too
        # With a draft model llama-cpp-python keeps every position's logits, but sizes that buffer for n_ctx
        # rows only if logits_all is passed too (else prompts over n_batch tokens fail): 4096 x vocab floats.
        self.llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False,
                                   draft_model=draft, logits_all=draft is not None)
        self.eos = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, t)}

    def __call__(self, ids: list[int], max_new_tokens: int) -> Run:
        out = []
        self.llm.reset()  # no reuse of the previous call's prefix: every method prefills the whole prompt
        start = time.perf_counter()
        for tok in self.llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(tok)
            if tok in self.eos or len(out) == max_new_tokens:
                break
        return Run(out, time.perf_counter() - start)


class ClmkitMethod:
    def __init__(self, name: str, model, draft_model: str | None, sampling: Sampling, options: dict):
        self.name, self.sampling = name, sampling
        self.engine = Engine(model)
        if name == "vanilla":
            self.drafter = None
        else:
            opts = dict(options.get(name, {}))
            if takes_draft_model(name) and draft_model:
                opts.setdefault("draft_model", draft_model)
            # One drafter for the whole run: Token Recycling's matrix stays hot across prompts.
            self.drafter = make_drafter(name, model, **opts)

    def __call__(self, ids: list[int], max_new_tokens: int) -> Run:
        start = time.perf_counter()
        c = self.engine.complete(ids, max_new_tokens=max_new_tokens, sampling=self.sampling, drafter=self.drafter)
        s = c.stats
        return Run(c.token_ids, time.perf_counter() - start, s.target_forwards, s.mean_accepted, s.draft_tokens,
                   s.accepted_tokens)


def check_methods(names: list[str]) -> None:
    known = set(HF_METHODS) | set(LLAMA_CPP_METHODS) | {"vanilla"} | set(available())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def make_methods(names: list[str], model, draft_model, sampling, options, hf_model=None) -> dict:
    """`model` runs the clmkit methods (on its backend); `hf_model` (torch, default `model`) the HF ones."""
    check_methods(names)
    methods = {}
    for n in names:
        if n in HF_METHODS:
            methods[n] = HFMethod(n, hf_model or model, draft_model, sampling)
        elif n in LLAMA_CPP_METHODS:
            methods[n] = LlamaCppPythonMethod(n, model.source, sampling)
        else:
            methods[n] = ClmkitMethod(n, model, draft_model, sampling, options)
    return methods


def tuned_budgets(model, methods: list[str], options: dict, retune: bool = False) -> dict:
    """Tree budgets from this backend's measured verify cost: the node count that maximises expected
    tokens/s (Token Recycling's model, clmkit/bench/verify_cost.py), given to every drafter that has a
    single budget and was not given one explicitly. The curve is this machine's saved one for this
    backend, kernel and model if there is one (`clm bench verify-cost` saves it), else measured now.
    When no tree pays (best = 1 node), drafters get the smallest tree (1 draft token) and it is said.
    Returns the measurement for the results file."""
    from clmkit.bench.verify_cost import best_budget, cached_costs
    from clmkit.drafters import budget_options

    costs, origin = cached_costs(model, TUNE_SIZES, repeats=3, refresh=retune)
    rows = best_budget({n: costs[n] for n in TUNE_SIZES})
    nodes = max(rows, key=lambda r: r["expected_speedup"])["nodes"]
    print(f"verify cost ({origin}): best tree {nodes} node(s)"
          + (" — no tree pays on this backend; drafters get the smallest (2 nodes)" if nodes == 1 else ""))
    tuned_to = {}
    for m in methods:
        if m in available():
            try:
                tuned = budget_options(m, max(1, nodes - 1))
            except InputError:
                continue  # no single budget (e.g. rsd's branching): keep its defaults
            for key, value in tuned.items():
                options.setdefault(m, {}).setdefault(key, value)
            tuned_to[m] = options[m]
    return {"nodes": nodes, "source": origin, "options": tuned_to, "verify_cost": rows}


def summarise(rows: list[dict], methods: list[str], group: str | None) -> list[dict]:
    """tokens/s, speedup over hf (or the first method), MAT, acceptance and parity per method."""
    base = "hf" if "hf" in methods else methods[0]
    groups = defaultdict(list)
    for r in rows:
        groups[r["category"] if group else "overall"].append(r)
    out = []
    for cat, rs in groups.items():
        base_tps = sum(r[base]["new_tokens"] for r in rs) / sum(r[base]["seconds"] for r in rs)
        for m in methods:
            runs = [r[m] for r in rs]
            tps = sum(x["new_tokens"] for x in runs) / sum(x["seconds"] for x in runs)
            row = {"category": cat, "method": m, "tok_s": tps, "speedup": tps / base_tps}
            if runs[0]["target_forwards"] is not None:
                forwards = sum(x["target_forwards"] for x in runs)
                row["MAT"] = sum(x["step_tokens"] for x in runs) / forwards if forwards else 0.0
                drafted = sum(x["draft_tokens"] for x in runs)
                row["accept_rate"] = sum(x["accepted_tokens"] for x in runs) / drafted if drafted else 0.0
            checks = [x.get("check") for x in runs if x.get("check") is not None]
            if checks:
                row["identical"] = f"{sum(c == 'identical' for c in checks)}/{len(checks)}"
                ties = sum(c == "near-tie" for c in checks)
                bad = sum(c == "DIVERGED" for c in checks)
                row["near_ties"], row["diverged"] = ties, bad
            out.append(row)
    return out


def plot(summary: list[dict], categories: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r["method"] for r in summary]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 2]})
    bars = ax1.bar(methods, [r["speedup"] for r in summary], color=["#999" if m.startswith("hf") else "#2a7" for m in methods])
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.bar_label(bars, fmt="%.2fx")
    ax1.set_ylabel("speedup over HF generate (tokens/s ratio)")
    ax1.set_title("overall")
    ax1.tick_params(axis="x", rotation=45)
    cats = sorted({r["category"] for r in categories})
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [next((r["speedup"] for r in categories if r["category"] == c and r["method"] == m), 0) for c in cats]
        ax2.bar([j + i * width for j in range(len(cats))], vals, width, label=m)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], cats, rotation=45, ha="right")
    ax2.set_title("per Spec-Bench category")
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_speed(
    methods: list[str],
    model_name: str = "smollm2-135m",
    per_category: int = 2,
    max_new_tokens: int = 128,
    sampling: Sampling = Sampling(),
    draft_model: str | None = None,
    options: dict | None = None,
    recycling_state: Path | None = None,
    output: Path | None = None,
    categories: list[str] | None = None,
    backend: str = "torch",
    kernel: str | None = None,
    tune: bool = False,
    retune: bool = False,
) -> dict:
    from clmkit.backends import load_for_cli
    from clmkit.models import NoTorchWeights

    check_methods(methods)  # before loading and tuning: a typo costs nothing
    prompts = load_specbench(per_category, categories)
    model = load_for_cli(model_name, backend, kernel)
    hf_model = None
    if isinstance(model.module, NoTorchWeights) and any(m in HF_METHODS for m in methods):
        hf_model = load(model_name)  # HF references need the torch weights
    options = {k: dict(v) for k, v in (options or {}).items()}
    if recycling_state is not None and "recycling" in methods:
        options.setdefault("recycling", {})["state"] = recycling_state if recycling_state.exists() else None
    tuning = tuned_budgets(model, methods, options, retune) if tune else None
    runners = make_methods(methods, model, draft_model, sampling, options, hf_model)
    encoder = Engine(model)
    encoded = [encoder.encode(p.text) for p in prompts]
    for run in runners.values():  # warm-up: first calls initialise kernels (not measured)
        run(encoded[0], 8)
    rows = []
    with Progress() as progress:
        task = progress.add_task("speed", total=len(prompts) * len(methods))
        for i, (p, ids) in enumerate(zip(prompts, encoded)):
            order = methods[i % len(methods):] + methods[: i % len(methods)]
            row = {"question_id": p.question_id, "category": p.category, "prompt_tokens": len(ids)}
            for m in order:
                progress.update(task, description=f"{p.category} {m}")
                r = runners[m](ids, max_new_tokens)
                row[m] = {"new_tokens": len(r.tokens), "seconds": r.seconds, "tokens": r.tokens,
                          "target_forwards": r.target_forwards, "step_tokens": None if r.mean_accepted is None else r.mean_accepted * r.target_forwards,
                          "draft_tokens": r.draft_tokens, "accepted_tokens": r.accepted_tokens}
                progress.advance(task)
            if sampling.greedy and "vanilla" in row:
                for m in methods:
                    d = first_divergence(model.runner(), ids, row["vanilla"]["tokens"], row[m]["tokens"])
                    row[m]["check"] = "identical" if d is None else ("near-tie" if d.near_tie else "DIVERGED")
                    if d is not None:  # judged by the backend's stated bound (Divergence.bound)
                        row[m]["divergence"] = str(d)
                        progress.console.print(f"[parity] {m} on question {p.question_id}: {row[m]['divergence']}", markup=False)
            rows.append(row)
    overall = summarise(rows, methods, group=None)
    per_category = summarise(rows, methods, group="category")
    recycler = getattr(runners.get("recycling"), "drafter", None)
    if recycler is not None and recycling_state is not None:
        recycler.save(recycling_state)
    result = {"model": model.name, "backend": model.runner().name, "kernel": getattr(model.runner(), "kernel", None),
              "tuned": tuning, "methods": methods, "max_new_tokens": max_new_tokens,
              "sampling": sampling.__dict__, "draft_model": draft_model, "prompts": len(prompts),
              "torch_threads": torch.get_num_threads(), "overall": overall, "per_category": per_category,
              "recycling_accept_probs": recycler.measured_accept_probs if recycler else None, "rows": rows}
    out = run_dir(output, "speed")
    write_json(out / "speed.json", result)
    cols = ["method", "tok_s", "speedup", "MAT", "accept_rate", "identical", "near_ties", "diverged"]
    (out / "speed.md").write_text("## Overall\n\n" + markdown_table(cols, overall) + "\n## Per category\n\n"
                                  + markdown_table(["category"] + cols, per_category))
    mode = "greedy" if sampling.greedy else f"T={sampling.temperature}"
    plot(overall, per_category, out / "speed.png", f"{model.name}, {mode}, {max_new_tokens} new tokens, {len(prompts)} Spec-Bench prompts")
    print_table(f"speed ({model.name}, {mode}, {len(prompts)} prompts)", cols, overall)
    print(f"results: {out}/speed.json, speed.md, speed.png")
    return result
