"""What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot Generalization?
(Wang et al., 2022).

Three architectures — causal decoder (CD), non-causal decoder (ND, prefix-LM: bidirectional over the
input) and encoder–decoder (ED) — each pretrained with a full language-modelling objective (FLM: CD
next-token; ND and ED prefix-LM: a random split, loss on the continuation) or masked span corruption
(MLM, T5-style sentinels; decoders read "corrupted <sep> targets"), same tokens per step and steps.
Then the MLM models are adapted with their FLM objective for a fraction of the steps ("LM adaptation").
The paper: without multitask finetuning, CD+FLM zero-shots best; MLM-pretrained models are poor
zero-shot, and LM adaptation of an MLM model recovers most of the gap cheaply.

Setting: natural prose (the Python reference). ED has n_layer/2 encoder + n_layer/2 decoder layers
(about the decoders' compute per token; more parameters because of cross-attention — reported).
Zero-shot probes on held-out text, scored by log-likelihood, no training on them:
  continuation: the true next 16 tokens vs 3 spans from elsewhere (4-way)
  order:        the true next 16 tokens vs the same tokens shuffled (2-way)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.lab.corpora import corpus_streams, default_tokenizer
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import grouped_bars, save, subplots, Size, fit, gpt_config, score
from clmkit.lab.model import GPT
from clmkit.lab.objectives import Batch, next_token, prefix_lm, py_rng, seq2seq, shifted, span_corruption


@dataclass
class Config:
    steps: int = 800
    adapt_fraction: float = 0.25
    lr: float = 1e-3
    probe_items: int = 96
    context: int = 48
    choice: int = 16


ARCHS = {"CD": dict(attention="causal"), "ND": dict(attention="prefix"), "ED": dict(attention="causal")}


def flm_batch(arch: str, rows: torch.Tensor, tok, g) -> Batch:
    if arch == "CD":
        return next_token(rows)
    if arch == "ND":
        return prefix_lm(rows, g)
    rng = py_rng(g)  # ED: encoder reads a random prefix, decoder predicts the rest
    pairs = []
    for row in rows.tolist():
        p = rng.randint(1, len(row) - 2)
        pairs.append((row[:p], row[p:]))
    return seq2seq(pairs, tok, "encdec")


def mlm_batch(arch: str, rows: torch.Tensor, tok, g) -> Batch:
    rng = py_rng(g)
    pairs = [span_corruption(row, tok, rng) for row in rows.tolist()]
    return seq2seq(pairs, tok, {"CD": "causal", "ND": "prefix", "ED": "encdec"}[arch])


def continuation_batch(arch: str, pairs: list[tuple[list[int], list[int]]], tok) -> Batch:
    """Score `choice` after `context` in each model's natural LM format (no <sep> in decoders)."""
    if arch == "ED":
        batch = seq2seq(pairs, tok, "encdec")
        lengths = torch.tensor([len(c) for _, c in pairs])
        batch.targets[torch.arange(len(pairs)), lengths] = -100  # drop the <eos> target
        return batch
    batch = shifted([c + x for c, x in pairs], tok, loss_from=[len(c) for c, _ in pairs])
    if arch == "ND":
        batch.prefix_len = torch.tensor([len(c) for c, _ in pairs])
    return batch


def make_probes(val_stream, cfg: Config, n: int, g: torch.Generator):
    rows = val_stream.windows(n * 4, cfg.context + cfg.choice, g).tolist()
    items = []
    for i in range(n):
        context, truth = rows[i][:cfg.context], rows[i][cfg.context:]
        others = [rows[n + 3 * i + k][cfg.context:] for k in range(3)]
        perm = torch.randperm(cfg.choice, generator=g).tolist()
        items.append((context, truth, others, [truth[j] for j in perm]))
    return items


def probe(model, arch: str, items, tok, device) -> dict:
    def loglik(pairs):
        lp, _, _ = score(model, continuation_batch(arch, pairs, tok), device)
        return lp

    true = loglik([(c, t) for c, t, _, _ in items])
    distract = torch.stack([loglik([(c, o[k]) for c, _, o, _ in items]) for k in range(3)], 1)
    shuffled = loglik([(c, s) for c, _, _, s in items])
    return {"continuation acc (4-way)": round((true > distract.max(1).values).float().mean().item(), 4),
            "order acc (2-way)": round((true > shuffled).float().mean().item(), 4),
            "true-continuation loss": round(-true.mean().item() / len(items[0][1]), 4)}


@register("arch-objective", paper="What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot Generalization? (Wang et al., 2022)",
          claim="causal decoder + full LM is best zero-shot without multitask finetuning; LM adaptation rescues MLM-pretrained models")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("reference", tok)
    L = size.block_size
    if ctx.tiny:
        cfg.context, cfg.choice = 12, 6
    steps, adapt_steps = ctx.steps(cfg.steps), ctx.steps(cfg.steps * cfg.adapt_fraction, 8)
    items = make_probes(val_stream, cfg, ctx.count(cfg.probe_items), torch.Generator().manual_seed(51))
    rows, curves, params = [], {}, {}
    for arch, overrides in ARCHS.items():
        layers = dict(n_layer=size.n_layer // 2, n_encoder_layer=size.n_layer // 2) if arch == "ED" else {}
        for objective, batch_fn in (("FLM", flm_batch), ("MLM", mlm_batch)):
            torch.manual_seed(ctx.seed)
            model = GPT(gpt_config(tok, size, **overrides, **layers))
            params[arch] = model.num_params()
            name = f"{arch}-{objective}"
            make = lambda step, g, a=arch, f=batch_fn: f(a, train_stream.windows(size.batch_size, L, g), tok, g)  # noqa: E731
            curves[name] = fit(ctx, name, model, make, steps, None, cfg.lr, size.batch_size)
            rows.append({"variant": name, "params": params[arch], "steps": steps, **probe(model, arch, items, tok, ctx.device)})
            if objective == "MLM":  # LM adaptation: continue with this architecture's FLM objective
                name = f"{arch}-MLM+FLM adapt"
                make = lambda step, g, a=arch: flm_batch(a, train_stream.windows(size.batch_size, L, g), tok, g)  # noqa: E731
                curves[name] = fit(ctx, name.replace(" ", "_").replace("+", "_"), model, make, adapt_steps, None,
                                   cfg.lr, size.batch_size)
                rows.append({"variant": name, "params": params[arch], "steps": steps + adapt_steps,
                             **probe(model, arch, items, tok, ctx.device)})

    def figure(path):
        fig, ax = subplots(figsize=(8, 3.8))
        metrics = ["continuation acc (4-way)", "order acc (2-way)"]
        grouped_bars(ax, rows, metrics)
        ax.axhline(0.25, color="gray", lw=0.5, ls="--")
        ax.axhline(0.5, color="gray", lw=0.5, ls=":")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, ncol=3)
        ax.set_title("zero-shot probes by architecture x objective")
        save(fig, path)

    notes = [f"Python reference prose; {size.n_layer} layers (ED: {size.n_layer // 2}+{size.n_layer // 2}) x {size.n_embd}, "
             f"rows of {L}, {steps} steps x {size.batch_size} (+{adapt_steps} adaptation steps); {len(items)} probe items, "
             f"context {cfg.context}, choices of {cfg.choice} tokens; chance 0.25 / 0.5"]
    return Result(rows, curves, {"params": params}, figure, notes)
