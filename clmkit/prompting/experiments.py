"""The measurements behind docs/prompting.md, one function per paper. Each writes one JSON line per
item as it goes to `out/<run>.jsonl` (a rerun resumes), then `<run>.summary.json|md|png` beside it.

    code_pass_at_1(model, "humaneval", ["plain", "cot", "secot"], limit, out)   # SeCoT
    recall(model, n, pairs, out)                    # JRT: key-value recall + Spec-Bench rag
    position_bias(model, "cold", limit, out)        # PINE: every option order, plain vs PINE
    judge_consistency(model, limit, out)            # PINE: LM-as-a-judge with A/B swapped
    compression(model, compressor, source, limit, rate, out)   # LLMLingua-2 vs -1 vs random vs full

Numbers come with n and 95% Wilson intervals; item methods are interleaved (every method runs on
item i before item i+1) so machine load hits them alike.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from clmkit.bench.report import markdown_table, write_json
from clmkit.errors import InputError
from clmkit.models import Model
from clmkit.prompting.stats import bootstrap_ci, mean_ci, paired_binary, paired_diff
from clmkit.reasoning.batch import run_each
from clmkit.reasoning.evaluate import select, wilson


class Records:
    """Append-only JSONL of per-item records keyed by `key`; a rerun skips keys already written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row
                except (json.JSONDecodeError, KeyError):
                    continue  # torn last line
        # a killed run may leave a torn last line: the next record must start on a line of its own
        # (only the writer fixes it, so a --done-only reader never touches a file being written)
        self.torn = self.path.exists() and not self.path.read_bytes().endswith(b"\n") and self.path.stat().st_size > 0
        self._lock = threading.Lock()  # batched runs make records on several threads

    def has_all(self, keys) -> bool:
        return all(key in self.rows for key in keys)

    def get_or_make(self, key: str, make: Callable[[], dict]) -> dict:
        if key not in self.rows:
            row = {"key": key, **make()}
            with self._lock:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(("\n" if self.torn else "") + json.dumps(row, default=str) + "\n")
                self.torn = False
                self.rows[key] = row
        return self.rows[key]


def spread_first(items: list) -> list:
    """The same items in bit-reversed index order (0, n/2, n/4, 3n/4, ...): every prefix is spread
    over the whole list, so a run stopped at a deadline has still sampled every part of it."""
    bits = max(1, (len(items) - 1).bit_length())
    return [items[i] for i in sorted(range(len(items)), key=lambda i: int(f"{i:0{bits}b}"[::-1], 2))]


def _done(records: "Records", items: list, keys_of: Callable, done_only: bool) -> list:
    """With `done_only`, only the items whose every record exists (an interrupted run's summary);
    otherwise all items, the ones an earlier run started first (finishing them is the cheapest)."""
    if not done_only:
        started = [any(key in records.rows for key in keys_of(item)) for item in items]
        return [item for item, s in zip(items, started) if s] + [item for item, s in zip(items, started) if not s]
    done = [item for item in items if records.has_all(keys_of(item))]
    if not done:
        raise InputError(f"--done-only: no item of this selection is finished in {records.path}")
    return done


def _proportion(hits: int, n: int) -> dict:
    low, high = wilson(hits, n)
    return {"n": n, "correct": hits, "accuracy": hits / n if n else 0.0, "ci95": [round(low, 3), round(high, 3)]}


def _finish(records: Records, title: str, summary: dict, rows: list[dict], columns: list[str],
            plot: Callable | None) -> dict:
    """<records>.summary.json / .md / .png beside the records file."""
    stem = records.path.with_suffix("")
    write_json(Path(f"{stem}.summary.json"), summary)
    Path(f"{stem}.summary.md").write_text(f"## {title}\n\n{markdown_table(columns, rows)}", encoding="utf-8")
    if plot is not None:
        plot(Path(f"{stem}.summary.png"))
    return summary


def _bars(path: Path, labels: list[str], values: list[float], errors: list[tuple[float, float]] | None, ylabel: str,
          title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.2))
    yerr = None
    if errors:
        yerr = [[v - lo for v, (lo, _) in zip(values, errors)], [hi - v for v, (_, hi) in zip(values, errors)]]
    ax.bar(range(len(labels)), values, yerr=yerr, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _tick(progress, task) -> None:
    if progress is not None:
        progress.advance(task)


# ---- SeCoT: pass@1 with sandboxed execution ------------------------------------------------------


def code_pass_at_1(text_model, dataset: str, strategies: list[str], limit: int | None, out: Path, *,
                   timeout_s: float = 10.0, memory_mb: int = 1024, done_only: bool = False, progress=None,
                   batch_size: int = 1, code_tokens: int | None = None) -> dict:
    """pass@1 per strategy on `limit` problems spread over the dataset. `done_only`: summarize the
    problems every strategy has a record for (an interrupted run) and generate nothing. `batch_size`
    > 1 (clmkit models): that many (problem, strategy) attempts in flight, their model calls decoded
    as one batch (reasoning/batch.py: greedy output as the serial run's); a record's `seconds` is
    then its wall time while sharing the batch. `code_tokens`: the budget of the call that writes the
    code (default: the budget of the records already there, else secot.CODE_TOKENS); one file's
    records all share one budget."""
    from clmkit.prompting.sandbox import run_program
    from clmkit.prompting.secot import CODE_STRATEGIES, CODE_TOKENS, extract_code, program_with_tests
    from clmkit.tasks.code import load_code

    unknown = [s for s in strategies if s not in CODE_STRATEGIES]
    if unknown:
        raise InputError(f"unknown code strategy {unknown[0]!r}; choose from {', '.join(CODE_STRATEGIES)}")
    records = Records(Path(out) / f"{dataset}__{text_model.name.replace('/', '-')}.jsonl")
    budgets = {r.get("code_tokens", 320) for r in records.rows.values()}  # records before the field: 320
    code_tokens = code_tokens or (min(budgets) if len(budgets) == 1 else CODE_TOKENS)  # a rerun resumes alike
    if budgets - {code_tokens}:
        raise InputError(f"{records.path} holds records made with a code budget of {sorted(budgets)} tokens, "
                         f"not {code_tokens}: pass --code-tokens {min(budgets)} or another --output-dir")
    items = _done(records, spread_first(select(load_code(dataset), limit)),
                  lambda i: [f"{i.id}|{s}" for s in strategies], done_only)
    task = progress.add_task(f"{dataset} pass@1", total=len(items) * len(strategies)) if progress else None

    def attempt(model, item, strategy):
        def make():
            started = time.perf_counter()
            result = CODE_STRATEGIES[strategy](model, item, code_tokens)
            code = extract_code(result.output)
            verdict = run_program(program_with_tests(item, code), timeout_s=timeout_s, memory_mb=memory_mb)
            return {"id": item.id, "strategy": strategy, "passed": verdict.passed, "status": verdict.status,
                    "isolation": verdict.network_isolation, "code": code[:4000], "steps": result.steps,
                    "seconds": round(time.perf_counter() - started, 2), "batch_size": batch_size,
                    "code_tokens": code_tokens}
        record = records.get_or_make(f"{item.id}|{strategy}", make)
        _tick(progress, task)
        return record

    todo = [(item, strategy) for item in items for strategy in strategies]  # interleaved: item i's before i+1's
    for _ in run_each(todo, text_model, lambda m, pair: attempt(m, *pair), batch_size):
        pass
    per = {s: [records.rows[f"{item.id}|{s}"] for item in items] for s in strategies}
    rows = []
    for strategy, rs in per.items():
        stat = _proportion(sum(r["passed"] for r in rs), len(rs))
        statuses = {k: sum(r["status"] == k for r in rs) for k in sorted({r["status"] for r in rs})}
        rows.append({"strategy": strategy, **stat, "pass@1": stat["accuracy"], "statuses": statuses,
                     "mean_s": round(statistics.mean(r["seconds"] for r in rs), 1)})
    summary = {"dataset": dataset, "model": text_model.name, "backend": getattr(text_model, "backend", None),
               "batch_sizes": sorted({r.get("batch_size", 1) for rs in per.values() for r in rs}),  # of the records
               "code_tokens": code_tokens, "n": len(items), "rows": rows,
               "isolation": sorted({r["isolation"] for rs in per.values() for r in rs}),
               "paired": {f"{s} vs {strategies[0]}": paired_binary([r["passed"] for r in per[s]],
                                                                   [r["passed"] for r in per[strategies[0]]])
                          for s in strategies[1:]}}
    plot = lambda p: _bars(p, [r["strategy"] for r in rows], [r["pass@1"] for r in rows],
                           [tuple(r["ci95"]) for r in rows], "pass@1", f"{dataset}, {text_model.name}, n={len(items)}")
    return _finish(records, f"{dataset} pass@1 ({text_model.name})", summary, rows,
                   ["strategy", "n", "correct", "pass@1", "ci95", "statuses", "mean_s"], plot)


# ---- JRT: recall accuracy and prefill cost ------------------------------------------------------


def _rag_items(limit: int | None) -> list[dict]:
    # read the file directly: clmkit.bench.specbench keeps only the first turn, not "reference"
    rows = [json.loads(l) for l in _specbench_path().read_text(encoding="utf-8").splitlines() if l.strip()]
    rag = [r for r in rows if r["category"] == "rag" and r.get("reference")]
    out = []
    for r in select(rag, limit):
        context, _, question = r["turns"][0].rstrip().rpartition("\n")
        refs = r["reference"][0] if isinstance(r["reference"][0], list) else r["reference"]
        out.append({"id": f"rag-{r['question_id']}", "context": context, "question": question.strip(), "refs": refs})
    return out


def _specbench_path() -> Path:
    from clmkit.data import data_path

    return data_path("spec_bench", "question.jsonl")


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def recall(model: Model, n: int, pairs: int, out: Path, *, rag_limit: int = 0, seed: int = 0, done_only: bool = False,
           progress=None) -> dict:
    """Plain vs JRT prompt on generated key-value recall (exact value) and Spec-Bench rag
    (an answer counts when it contains one of the reference answers, NQ's lenient match); the two
    tasks' items alternate, each in spread-first order."""
    from clmkit.engine import Engine
    from clmkit.prompting.jrt import jrt_prompt, recall_correct, recall_items

    engine = Engine(model)
    records = Records(Path(out) / f"recall__{model.name}.jsonl")
    keys = lambda item_id: [f"{item_id}|plain", f"{item_id}|jrt"]
    kv = _done(records, spread_first(recall_items(n, pairs, seed)), lambda i: keys(i.id), done_only)
    rag = spread_first(_rag_items(rag_limit)) if rag_limit else []
    if done_only:  # the rag questions are the long ones: an interrupted run may have finished none
        rag = [i for i in rag if records.has_all(keys(i["id"]))]
    task = progress.add_task("recall", total=2 * (len(kv) + len(rag))) if progress else None

    def ask(key, prompt, tokens, check):
        def make():
            done = engine.complete(prompt, max_new_tokens=tokens, temperature=0.0, stop=["\n"])
            return {"output": done.text, "correct": check(done.text), "prompt_tokens": done.stats.prompt_tokens,
                    "prefill_s": done.stats.ttft_s}
        row = records.get_or_make(key, make)
        _tick(progress, task)
        return row

    results: dict[tuple[str, str], list[dict]] = {("kv-recall", m): [] for m in ("plain", "jrt")}
    results.update({("specbench-rag", m): [] for m in ("plain", "jrt")} if rag else {})
    for k in range(max(len(kv), len(rag))):
        for method, repeats in (("plain", 1), ("jrt", 2)):
            if k < len(kv):
                item = kv[k]
                prompt = jrt_prompt(item.meta["context"], item.meta["question"], repeats)
                results["kv-recall", method].append(
                    ask(f"{item.id}|{method}", prompt, 24, lambda text, a=item.answer: recall_correct(text, a)))
            if k < len(rag):
                item = rag[k]
                prompt = jrt_prompt(item["context"], item["question"], repeats)
                check = lambda text, refs=item["refs"]: any(_normal(r) and _normal(r) in _normal(text) for r in refs)
                results["specbench-rag", method].append(ask(f"{item['id']}|{method}", prompt, 32, check))
    rows = []
    for (task_name, method), rs in results.items():
        rows.append({"task": task_name, "method": method, **_proportion(sum(r["correct"] for r in rs), len(rs)),
                     "prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in rs), 1),
                     "prefill_ms_median": round(1000 * statistics.median(r["prefill_s"] for r in rs), 1)})
    for r in rows:  # prefill cost relative to the plain prompt of the same task
        base = next(b for b in rows if b["task"] == r["task"] and b["method"] == "plain")
        r["prefill_x_plain"] = round(r["prefill_ms_median"] / base["prefill_ms_median"], 2)
    paired = {t: paired_binary([r["correct"] for r in results[(t, "jrt")]], [r["correct"] for r in results[(t, "plain")]])
              for t in sorted({t for t, _ in results})}  # a = jrt, b = plain
    summary = {"model": model.name, "backend": model.runner().name, "pairs": pairs, "seed": seed, "rows": rows,
               "paired_jrt_vs_plain": paired}
    plot = lambda p: _bars(p, [f"{r['task']}\n{r['method']}" for r in rows], [r["accuracy"] for r in rows],
                           [tuple(r["ci95"]) for r in rows], "accuracy", f"JRT vs plain, {model.name}")
    return _finish(records, f"JRT recall ({model.name})", summary, rows,
                   ["task", "method", "n", "correct", "accuracy", "ci95", "prompt_tokens", "prefill_ms_median",
                    "prefill_x_plain"], plot)


# ---- PINE: position bias over every option order ------------------------------------------------


def _label_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    """The first token of each label as it may start the answer: "A" and " A"."""
    return [sorted({tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in (label, " " + label)})
            for label in labels]


def _pick(logits: torch.Tensor, label_ids: list[list[int]]) -> int:
    return max(range(len(label_ids)), key=lambda k: max(float(logits[t]) for t in label_ids[k]))


def option_layout(item) -> tuple[str, list[str], str]:
    """(text before the options, option labels, text after them) of a multiple-choice item whose
    prompt lists "LABEL. choice" lines (COLD, CausalNet). A closed question that lists none of its
    options (CLadder's yes/no) gets them listed after it as "A. yes" / "B. no" lines, then "Answer:",
    so their order can move too."""
    from clmkit.reasoning.strategies import choice_labels

    labels = choice_labels(item)
    listed = [f"{label}. {choice}" in item.prompt for label, choice in zip(labels, item.choices)]
    if not any(listed):
        return (f"{item.prompt.rstrip()}\nChoose one of the options ({' or '.join(labels)}).\n", labels, "Answer:")
    first, last = f"{labels[0]}. {item.choices[0]}", f"{labels[-1]}. {item.choices[-1]}"
    if not all(listed):
        raise InputError(f"item {item.id} does not list its options as 'LABEL. choice' lines")
    start = item.prompt.index(first)
    end = item.prompt.index(last, start) + len(last)
    return item.prompt[:start], labels, item.prompt[end:].lstrip("\n")


def gold_index(item) -> int:
    """The gold option's index: COLD / CausalNet store it, CLadder stores the answer text ("yes")."""
    return item.answer if isinstance(item.answer, int) else item.choices.index(item.answer)


def _choose(model, prefix, segments, suffix, label_ids, pine: bool, answers: list[str] | None = None) -> int:
    """The option the model picks: the label with the highest next-token logit, or (with `answers`)
    the answer text with the highest mean log-probability as the reply (lm-eval's acc_norm-like
    scoring, which takes the label prior out and leaves the position effect)."""
    from clmkit.prompting.pine import pine_logits, plain_logits, segment_prompt

    if answers is None:
        prompt = segment_prompt(model.tokenizer, prefix, segments, suffix, chat=model.chat)
        return _pick(pine_logits(model, prompt) if pine else plain_logits(model, prompt), label_ids)
    scores = []
    for answer in answers:
        prompt = segment_prompt(model.tokenizer, prefix, segments, suffix, chat=model.chat)
        reply = list(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
        prompt.suffix = prompt.suffix + reply
        logits = (pine_logits if pine else plain_logits)(model, prompt, all_positions=True)
        logp = torch.log_softmax(logits[-len(reply) - 1:-1].float(), dim=-1).gather(1, torch.tensor(reply)[:, None])
        scores.append(float(logp.mean()))
    return max(range(len(answers)), key=lambda k: scores[k])


def position_bias(model: Model, task: str, limit: int | None, out: Path, score: str = "content",
                  done_only: bool = False, progress=None) -> dict:
    """Accuracy of plain vs PINE under every order of each item's options (labels stay in display
    order, contents move); spread = best - worst order's accuracy. `score`: "label" reads the
    answer label's logit, "content" the log-likelihood of each option's text as the reply."""
    if score not in ("label", "content"):
        raise InputError(f"score must be label or content, got {score!r}")
    from clmkit.tasks.registry import load_task

    items = [i for i in load_task(task) if i.choices and len(i.choices) <= 4]
    if not items:
        raise InputError(f"task {task!r} has no multiple-choice items with at most 4 options")
    records = Records(Path(out) / f"position__{task}__{score}__{model.name}.jsonl")
    items = _done(records, spread_first(select(items, limit)), lambda i: [f"{i.id}|plain", f"{i.id}|pine"], done_only)
    orders = list(itertools.permutations(range(len(items[0].choices))))
    bar = progress.add_task(f"{task} orders", total=len(items) * len(orders) * 2) if progress else None
    picks: dict[str, list[list[int]]] = {"plain": [], "pine": []}
    for item in items:
        prefix, labels, suffix = option_layout(item)
        label_ids = _label_ids(model.tokenizer, labels)
        for method in ("plain", "pine"):
            def make(method=method):
                chosen = []
                for order in itertools.permutations(range(len(item.choices))):
                    segments = [f"{labels[k]}. {item.choices[c]}\n" for k, c in enumerate(order)]
                    answers = None if score == "label" else [item.choices[c] for c in order]
                    chosen.append(order[_choose(model, prefix, segments, suffix, label_ids, method == "pine", answers)])
                    _tick(progress, bar)
                return {"id": item.id, "method": method, "gold": gold_index(item), "chosen": chosen}
            picks[method].append(records.get_or_make(f"{item.id}|{method}", make)["chosen"])
    golds = [gold_index(item) for item in items]

    def order_accuracies(pairs):  # [(chosen per order, gold)] -> accuracy in each order
        return [sum(c[o] == g for c, g in pairs) / len(pairs) for o in range(len(orders))]

    spread_of = lambda pairs: max(order_accuracies(pairs)) - min(order_accuracies(pairs))
    rows = []
    for method, chosen in picks.items():
        per_order = order_accuracies(list(zip(chosen, golds)))
        consistent = sum(len(set(c)) == 1 for c in chosen)
        first = sum(c[o] == orders[o][0] for c in chosen for o in range(len(orders)))
        rows.append({"method": method, "n": len(items), "orders": len(orders),
                     "accuracy_mean": round(statistics.mean(per_order), 3),
                     "accuracy_min": round(min(per_order), 3), "accuracy_max": round(max(per_order), 3),
                     "spread": round(max(per_order) - min(per_order), 3),
                     "spread_ci95": bootstrap_ci(list(zip(chosen, golds)), spread_of),
                     "accuracy_mean_ci95": bootstrap_ci(list(zip(chosen, golds)),
                                                        lambda ps: statistics.mean(order_accuracies(ps))),
                     "same_answer_all_orders": consistent, "consistency": round(consistent / len(items), 3),
                     "consistency_ci95": [round(x, 3) for x in wilson(consistent, len(items))],
                     "picked_first_position": round(first / (len(items) * len(orders)), 3),
                     "per_order_accuracy": [round(a, 3) for a in per_order]})
    summary = {"task": task, "model": model.name, "score": score, "orders": [list(o) for o in orders], "rows": rows}
    plot = lambda p: _bars(p, [r["method"] for r in rows], [r["spread"] for r in rows], None,
                           "accuracy spread over option orders", f"{task}, {model.name}, n={len(items)}")
    return _finish(records, f"position bias on {task}, {score} scoring ({model.name})", summary, rows,
                   ["method", "n", "orders", "accuracy_mean", "accuracy_mean_ci95", "accuracy_min", "accuracy_max",
                    "spread", "spread_ci95", "consistency", "consistency_ci95", "picked_first_position"], plot)


def judge_pairs(limit: int | None, seed: int = 0) -> list[dict]:
    """Spec-Bench questions with a reference answer, each paired with the reference of another
    question of the same category: a judge that reads the question should prefer the first."""
    rows = [json.loads(l) for l in _specbench_path().read_text(encoding="utf-8").splitlines() if l.strip()]
    usable = []
    for r in rows:
        ref = r.get("reference")
        if ref and r["category"] in ("math_reasoning", "translation", "qa", "rag", "summarization"):
            ref = ref[0] if isinstance(ref[0], str) else ", ".join(ref[0])
            if r["category"] != "rag" and len(ref) < 600:
                usable.append({"id": r["question_id"], "category": r["category"], "question": r["turns"][0],
                               "good": ref.strip()})
    rng = random.Random(seed)
    pairs = []
    for r in usable:
        others = [o for o in usable if o["category"] == r["category"] and o["id"] != r["id"]]
        pairs.append({**r, "bad": rng.choice(others)["good"]})
    return select(pairs, limit)


def judge_consistency(model: Model, limit: int | None, out: Path, done_only: bool = False, progress=None) -> dict:
    """LM-as-a-judge, A/B swapped: consistent = the same response wins in both orders."""
    records = Records(Path(out) / f"judge__{model.name}.jsonl")
    pairs = _done(records, spread_first(judge_pairs(limit)), lambda p: [f"{p['id']}|plain", f"{p['id']}|pine"],
                  done_only)
    bar = progress.add_task("judge pairs", total=len(pairs) * 2) if progress else None
    label_ids = _label_ids(model.tokenizer, ["A", "B"])
    prefix_of = lambda p: (f"Which response answers the question better?\nQuestion: {p['question'][:1500]}\n")
    suffix = "Answer with A or B."
    verdicts: dict[str, list[list[str]]] = {"plain": [], "pine": []}
    for pair in pairs:
        for method in ("plain", "pine"):
            def make(method=method):
                winners = []
                for first, second in (("good", "bad"), ("bad", "good")):
                    segments = [f"Response A: {pair[first]}\n", f"Response B: {pair[second]}\n"]
                    k = _choose(model, prefix_of(pair), segments, suffix, label_ids, method == "pine")
                    winners.append((first, second)[k])
                _tick(progress, bar)
                return {"id": pair["id"], "method": method, "winners": winners}
            verdicts[method].append(records.get_or_make(f"{pair['id']}|{method}", make)["winners"])
    rows = []
    for method, ws in verdicts.items():
        consistent = sum(w[0] == w[1] for w in ws)
        good = sum(x == "good" for w in ws for x in w)
        first = sum(w[0] == "good" for w in ws) + sum(w[1] == "bad" for w in ws)
        rows.append({"method": method, "n": len(ws), "consistent": consistent,
                     "consistency": round(consistent / len(ws), 3),
                     "consistency_ci95": [round(x, 3) for x in wilson(consistent, len(ws))],
                     "accuracy": round(good / (2 * len(ws)), 3),
                     "accuracy_ci95": bootstrap_ci(ws, lambda v: sum(x == "good" for w in v for x in w) / (2 * len(v))),
                     "picked_A": round(first / (2 * len(ws)), 3)})
    summary = {"model": model.name, "rows": rows, "categories": sorted({p["category"] for p in pairs})}
    plot = lambda p: _bars(p, [r["method"] for r in rows], [r["consistency"] for r in rows],
                           [tuple(r["consistency_ci95"]) for r in rows], "swap consistency",
                           f"LM-as-a-judge, {model.name}, n={len(pairs)}")
    return _finish(records, f"judge swap consistency ({model.name})", summary, rows,
                   ["method", "n", "consistent", "consistency", "consistency_ci95", "accuracy", "accuracy_ci95",
                    "picked_A"], plot)


# ---- compression: ratio vs answer likelihood, prefill saved -------------------------------------


@torch.inference_mode()
def _answer_nll_and_prefill(model: Model, prompt_ids: list[int], answer_ids: list[int]) -> tuple[float, float]:
    """Mean -log p of the answer tokens after the prompt, and the prompt-only prefill time (s, the
    faster of two runs: the first may pay for allocation, and the machine is shared)."""
    from clmkit.hf_adapter import Forward, new_cache

    forward = Forward(model.module)
    prefill = math.inf
    for _ in range(2):
        started = time.perf_counter()
        forward(torch.tensor([prompt_ids]), torch.arange(len(prompt_ids))[None],
                new_cache(model.module, len(prompt_ids)), last_only=True)
        prefill = min(prefill, time.perf_counter() - started)
    ids = prompt_ids + answer_ids
    logits = model.module(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1).gather(1, torch.tensor(answer_ids)[:, None])
    return float(-logp.mean()), prefill


def compression(model: Model, compressor_dir: Path | None, source: str, limit: int | None, rate: float, out: Path, *,
                generate: bool = False, seed: int = 0, done_only: bool = False, progress=None) -> dict:
    """full vs LLMLingua-2 (trained compressor) vs LLMLingua-1 (self-information) vs random words,
    all at `rate`: answer NLL/token (gold solution / reference summary, teacher forced), achieved
    rate, prefill time; with `generate`, GSM8K accuracy of a greedy answer (256 tokens)."""
    from clmkit.engine import Engine
    from clmkit.prompting.chat import user_turn
    from clmkit.prompting.compress import Compressor, select as keep_words, self_information, split_words
    from clmkit.prompting.compress_data import last_number, load_items

    numbered = list(enumerate(select(load_items(source, "eval"), limit)))  # the index seeds the random baseline
    head, tail = user_turn(model.tokenizer) if model.chat else ("", "")
    compressor = Compressor.load(compressor_dir, model) if compressor_dir else None
    engine = Engine(model)
    methods = ["full"] + (["llmlingua2"] if compressor else []) + ["selfinfo", "random"]
    records = Records(Path(out) / f"compress__{source}__r{rate}__{model.name}.jsonl")
    numbered = _done(records, spread_first(numbered), lambda ii: [f"{ii[1].id}|{m}" for m in methods], done_only)
    items = [item for _, item in numbered]
    bar = progress.add_task(f"{source} @ {rate}", total=len(items) * len(methods)) if progress else None
    tok = lambda text: list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for index, item in numbered:
        for method in methods:
            def make(method=method):
                started = time.perf_counter()
                if method == "full":
                    text = item.text
                elif method == "llmlingua2":
                    text = compressor.compress(item.text, rate).text
                elif method == "selfinfo":
                    words, scores = self_information(model, item.text, head + item.before)
                    text = keep_words(words, scores, rate).text
                else:
                    words = split_words(model.tokenizer, item.text)
                    g = torch.Generator().manual_seed(seed * 100003 + index)
                    text = keep_words(words, torch.rand(len(words.text), generator=g), rate).text
                compress_s = time.perf_counter() - started
                prompt_ids = tok(head + item.prompt(text) + tail)
                nll, prefill = _answer_nll_and_prefill(model, prompt_ids, tok(item.answer))
                row = {"id": item.id, "method": method, "rate": len(tok(text)) / len(tok(item.text)),
                       "nll": nll, "prefill_s": prefill, "prompt_tokens": len(prompt_ids), "compress_s": compress_s,
                       "text": text[:3000]}
                if generate and item.gold_number is not None:
                    answer = engine.complete(item.prompt(text), max_new_tokens=256, temperature=0.0).text
                    row.update(output=answer[:2000], correct=last_number(answer) == item.gold_number)
                return row
            results[method].append(records.get_or_make(f"{item.id}|{method}", make))
            _tick(progress, bar)
    rows = []
    full_prefill = statistics.median(r["prefill_s"] for r in results["full"])
    for method, rs in results.items():
        row = {"method": method, "n": len(rs), "rate_target": 1.0 if method == "full" else rate,
               "rate_achieved": round(statistics.mean(r["rate"] for r in rs), 3),
               "answer_nll": round(statistics.mean(r["nll"] for r in rs), 3),
               "answer_nll_sd": round(statistics.stdev(r["nll"] for r in rs), 3) if len(rs) > 1 else 0.0,
               "answer_nll_ci95": [round(x, 3) for x in mean_ci([r["nll"] for r in rs])["ci95"]],
               "prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in rs), 1),
               "prefill_ms_median": round(1000 * statistics.median(r["prefill_s"] for r in rs), 1),
               "compress_ms_median": round(1000 * statistics.median(r["compress_s"] for r in rs), 1)}
        row["prefill_x_full"] = round(row["prefill_ms_median"] / (1000 * full_prefill), 2)
        if all("correct" in r for r in rs):
            row.update(_proportion(sum(r["correct"] for r in rs), len(rs)))
        rows.append(row)
    nll = {m: [r["nll"] for r in rs] for m, rs in results.items()}
    versus = list(itertools.combinations(methods[1:] + ["full"], 2))  # (llmlingua2, selfinfo), ..., (random, full)
    summary = {"source": source, "rate": rate, "model": model.name, "rows": rows,
               "compressor": str(compressor_dir) if compressor_dir else None,
               "paired_answer_nll": {f"{a} - {b}": paired_diff(nll[a], nll[b]) for a, b in versus}}
    plot = lambda p: _bars(p, [r["method"] for r in rows], [r["answer_nll"] for r in rows], None,
                           "answer NLL / token (lower = better)", f"{source}, rate {rate}, {model.name}, n={len(items)}")
    columns = ["method", "n", "rate_target", "rate_achieved", "answer_nll", "answer_nll_ci95", "prompt_tokens",
               "prefill_ms_median", "prefill_x_full", "compress_ms_median"] + (["accuracy", "ci95"] if generate else [])
    return _finish(records, f"compression on {source} at rate {rate} ({model.name})", summary, rows, columns, plot)
