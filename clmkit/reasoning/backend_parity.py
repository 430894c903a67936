"""Do the torch and llama.cpp backends give the same answers? The `direct` prompts of benchmark items,
greedily on both, and `direct-ll`'s log-probabilities on both.

    python -m clmkit.reasoning.backend_parity --per-task 6 --out parity.json

torch runs the GGUF's weights dequantized to fp32; llama.cpp runs the quantized weights with 8-bit
activations, so the two are different numerics: a greedy choice can flip where torch's top-2 logit
gap is small. Per item this records whether the generations are identical, and if not, the first
differing token and torch's top-2 gap there (clmkit.parity), the largest next-token logit difference
after the prompt, and both backends' choice log-probabilities and picks. docs/reasoning.md reports it.
"""

from __future__ import annotations

import argparse
import json

from clmkit.parity import first_divergence, last_logits
from clmkit.reasoning.evaluate import select
from clmkit.reasoning.lm import ClmkitModel
from clmkit.reasoning.loglik import closed_form_choices
from clmkit.reasoning.strategies import ANSWER_TOKENS, answer_hint, question_text
from clmkit.tasks.registry import load_task

TASKS = ("cladder", "corr2cause", "cold", "causalnet")


def compare(models: dict[str, ClmkitModel], item) -> dict:
    """One item on both backends (`models`: "torch" and "llama.cpp")."""
    reference, other = models["torch"], models["llama.cpp"]
    prompt = f"{question_text(item)}\n{answer_hint(item)}\nAnswer:"
    ids = reference.engine.encode(prompt, chat=reference.chat)
    got = {name: m.engine.complete(prompt, max_new_tokens=ANSWER_TOKENS, temperature=0.0).token_ids
           for name, m in models.items()}
    d = first_divergence(reference.engine.backend.oracle, ids, got["torch"], got["llama.cpp"])
    gap = (last_logits(reference.engine.backend, ids) - last_logits(other.engine.backend, ids)).abs().max()
    row = {"task": item.meta.get("task"), "id": item.id, "identical": d is None,
           "first_difference": None if d is None else d.index, "torch_top2_gap": None if d is None else d.top2_gap,
           "max_abs_logit_diff_after_prompt": float(gap),
           "text": {name: m.engine.model.tokenizer.decode(got[name])[:60] for name, m in models.items()}}
    found = closed_form_choices(item)
    if found is not None:
        choices = found[0]
        logprobs = {name: [s.logprob for s in m.loglikelihood(prompt, choices)] for name, m in models.items()}
        row["logprobs"] = logprobs
        row["same_pick"] = len({max(range(len(choices)), key=v.__getitem__) for v in logprobs.values()}) == 1
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--per-task", type=int, default=6, help="items per task, spread over it (--limit)")
    parser.add_argument("--out", default=None, help="write the rows and a summary as JSON")
    args = parser.parse_args(argv)
    models = {b: ClmkitModel(args.model, backend=b) for b in ("torch", "llama.cpp")}
    rows = []
    for task in args.tasks:
        for item in select(load_task(task), args.per_task):
            rows.append(compare(models, item))
            print(json.dumps(rows[-1]), flush=True)
    scored = [r for r in rows if "logprobs" in r]
    summary = {
        "items": len(rows), "identical": sum(r["identical"] for r in rows),
        "torch_top2_gap_at_divergences": sorted(r["torch_top2_gap"] for r in rows if not r["identical"]),
        "max_abs_logit_diff_after_prompt": max((r["max_abs_logit_diff_after_prompt"] for r in rows), default=None),
        "direct_ll_same_pick": f"{sum(r['same_pick'] for r in scored)}/{len(scored)}",
        "max_abs_logprob_diff": max((abs(a - b) for r in scored for a, b in zip(*r["logprobs"].values())), default=None),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
