"""Self-distillation data: the target's own responses to prompts the speed benchmark never sees.

Medusa-2 and EAGLE train draft heads on the target's *own* outputs, so the heads learn what the
target says, not what a dataset says. Prompts come from `../shared/data` sets (CLMKIT_DATA):
Spec-Bench questions outside the benchmark's fixed sample (`bench.specbench.load_specbench` takes
the first N per category in file order, N <= HELD_OUT_PER_CATEGORY here, so all of those ids are
excluded), GSM8K test questions, MBPP task texts and HumanEval prompts. Each prompt is answered
greedily and/or by sampling (temperature 0.7) with HF `generate`, batched with left padding.
The result is a JSONL of {"source", "mode", "prompt": ids, "response": ids}.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import torch
from rich.progress import Progress

from clmkit.bench.specbench import SPECBENCH_CATEGORIES, load_specbench
from clmkit.data import data_path
from clmkit.errors import InputError

HELD_OUT_PER_CATEGORY = 5  # the speed benchmark samples the first <= 5 per category: never train on them
SOURCES = ("specbench", "gsm8k", "mbpp", "humaneval")


def benchmark_question_ids() -> set[int]:
    return {p.question_id for p in load_specbench(HELD_OUT_PER_CATEGORY)}


def prompt_texts(source: str) -> list[str]:
    """All prompt texts of one source, in file order."""
    if source == "specbench":
        excluded = benchmark_question_ids()
        return [p.text for p in load_specbench(None, list(SPECBENCH_CATEGORIES)) if p.question_id not in excluded]
    if source == "gsm8k":
        rows = data_path("gsm8k", "test.jsonl").read_text().splitlines()
        return [json.loads(r)["question"] for r in rows if r.strip()]
    if source == "mbpp":
        rows = data_path("mbpp", "mbpp.jsonl").read_text().splitlines()
        return [json.loads(r)["text"] + " Write it in Python." for r in rows if r.strip()]
    if source == "humaneval":
        with gzip.open(data_path("humaneval", "HumanEval.jsonl.gz"), "rt") as f:
            return ["Complete this Python function:\n\n" + json.loads(r)["prompt"] for r in f if r.strip()]
    raise InputError(f"unknown prompt source {source!r}; known: {', '.join(SOURCES)}")


def sample_prompts(n: int, seed: int, sources=SOURCES) -> list[tuple[str, str]]:
    """`n` (source, text) pairs, drawn round-robin from the sources in a seeded random order."""
    rng = random.Random(seed)
    pools = []
    for s in sources:
        texts = prompt_texts(s)
        rng.shuffle(texts)
        pools.append([(s, t) for t in texts])
    out: list[tuple[str, str]] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def encode(model, text: str, max_prompt_tokens: int) -> list[int]:
    tok = model.tokenizer
    if model.chat and getattr(tok, "chat_template", None) is not None:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tok(text)["input_ids"]
    return [int(i) for i in ids][-max_prompt_tokens:]


@torch.inference_mode()
def generate_batch(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
    """The target's responses, one HF `generate` call over a left-padded batch (EOS kept, padding cut)."""
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else min(model.eos_token_ids)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(seed)
    sample = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = model.module.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad, **sample)
    responses = []
    eos = model.eos_token_ids
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        responses.append(row[:end])
    return responses


def build_distill_data(model, out: Path, prompts: int = 256, max_new_tokens: int = 192, sampled_fraction: float = 0.5,
                       batch_size: int = 16, max_prompt_tokens: int = 384, seed: int = 0) -> Path:
    """Write `out` (JSONL): the target's greedy responses to `prompts` prompts, plus sampled (T=0.7)
    responses to a `sampled_fraction` of them. Resumable: rows already in `out` are kept."""
    pairs = sample_prompts(prompts, seed)
    jobs = [(s, t, 0.0) for s, t in pairs]
    jobs += [(s, t, 0.7) for s, t in pairs[: int(len(pairs) * sampled_fraction)]]
    done = sum(1 for line in out.read_text().splitlines() if line.strip()) if out.exists() else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f, Progress() as progress:
        task = progress.add_task("self-distillation", total=len(jobs), completed=done)
        for start in range(done - done % batch_size, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            temps = {t for _, _, t in chunk}
            encoded = [encode(model, text, max_prompt_tokens) for _, text, _ in chunk]
            responses: list[list[int]] = [[] for _ in chunk]
            for temp in temps:  # a batch straddling greedy and sampled jobs runs as two calls
                idx = [i for i, (_, _, t) in enumerate(chunk) if t == temp]
                got = generate_batch(model, [encoded[i] for i in idx], max_new_tokens, temp, seed + start)
                for i, r in zip(idx, got):
                    responses[i] = r
            for i, ((source, _, temp), ids, resp) in enumerate(zip(chunk, encoded, responses)):
                if start + i < done:
                    continue
                f.write(json.dumps({"source": source, "mode": "greedy" if temp == 0 else f"T={temp}",
                                    "prompt": ids, "response": resp}) + "\n")
            f.flush()
            progress.update(task, completed=min(len(jobs), start + len(chunk)))
    return out


def read_distill_data(path: Path) -> list[dict]:
    if not path.exists():
        raise InputError(f"self-distillation data not found: {path} (make it with `clm train data`)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
