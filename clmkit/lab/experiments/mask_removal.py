"""Do Not (Always) Look Right — Dukić & Šnajder (2024), on decoder LLMs for sequence labelling.

A decoder LM labels tokens worse than an encoder because position t cannot see the tokens after it.
The paper removes the causal mask in some layer groups while fine-tuning for labelling and finds
that unmasking (some) layers helps.

Setting: a causal GPT pretrained with next-token loss on Python stdlib code, then fine-tuned (all
weights + a linear tag head) to label every BPE token with the role of the Python token it belongs
to — keyword, def, call, attribute, store, name, number, string, comment, op, other (from `tokenize`).
Two roles depend on the right context: "call" (a name followed by "(") and "store" (followed by "=").
Variants differ only in which layers are bidirectional during fine-tuning: none, the top half,
the bottom half, all. Measured on held-out files: tag accuracy, macro-F1, and accuracy on call/store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clmkit.lab.corpora import TAGS, corpus_streams, default_tokenizer, python_source_files, split, tag_tokens
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import grouped_bars, save, subplots, Size, fit, fixed_eval, gpt_config
from clmkit.lab.model import GPT, GPTConfig
from clmkit.lab.objectives import next_token


@dataclass
class Config:
    pretrain_steps: int = 2000
    finetune_steps: int = 600
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    tag_chars: int = 800_000       # code characters tagged for fine-tuning + evaluation
    eval_windows: int = 128


class Tagger(torch.nn.Module):
    def __init__(self, gpt: GPT, n_tags: int):
        super().__init__()
        self.gpt, self.config = gpt, gpt.config
        self.head = torch.nn.Linear(gpt.config.n_embd, n_tags)

    def forward(self, idx, **kw):
        return self.head(self.gpt.hidden(idx))

    def aux_loss(self):
        return self.gpt.aux_loss()


def tag_stream(tok, files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, tags = [], []
    for source in files:
        i, t = tag_tokens(tok, source)
        ids += i
        tags += t
    return torch.tensor(ids), torch.tensor(tags)


def windows(ids, tags, batch: int, length: int, g: torch.Generator):
    starts = torch.randint(0, len(ids) - length, (batch,), generator=g).tolist()
    return torch.stack([ids[s:s + length] for s in starts]), torch.stack([tags[s:s + length] for s in starts])


def tag_loss(model, batch) -> torch.Tensor:
    ids, tags = batch
    logits = model(ids)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tags.reshape(-1))


def tag_metrics(model, ids, tags, device) -> dict:
    with torch.no_grad():
        pred = model(ids.to(device)).argmax(-1).cpu()
    pred, gold = pred.reshape(-1), tags.reshape(-1)
    f1s = []
    for k in range(len(TAGS)):
        tp = ((pred == k) & (gold == k)).sum().item()
        fp, fn = ((pred == k) & (gold != k)).sum().item(), ((pred != k) & (gold == k)).sum().item()
        if tp + fn:
            f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
    out = {"tag acc": round((pred == gold).float().mean().item(), 4), "macro-F1": round(sum(f1s) / len(f1s), 4)}
    for role in ("call", "store"):
        sel = gold == TAGS.index(role)
        out[f"{role} acc"] = round((pred[sel] == gold[sel]).float().mean().item(), 4) if sel.any() else float("nan")
    return out


@register("mask-removal", paper="Do Not (Always) Look Right: decoder LLMs for sequence labeling (Dukić & Šnajder, 2024)",
          claim="removing the causal mask in some layer groups during fine-tuning improves sequence labelling")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    L = size.block_size
    train_stream, val_stream = corpus_streams("code", tok, small=ctx.tiny)
    pretrain_batch = lambda step, g: next_token(train_stream.windows(size.batch_size, L + 1, g))  # noqa: E731
    torch.manual_seed(ctx.seed)
    base = GPT(gpt_config(tok, size))
    pre_steps = ctx.steps(cfg.pretrain_steps)
    curves = {"pretrain (causal LM)": fit(ctx, "pretrain", base, pretrain_batch, pre_steps,
                                          lambda: fixed_eval(base, pretrain_batch, 2, ctx.device), cfg.lr, size.batch_size)}

    files = python_source_files(max_chars=int(cfg.tag_chars * (0.1 if ctx.tiny else 1.0)))
    tr_ids, tr_tags = tag_stream(tok, split(files, False))
    va_ids, va_tags = tag_stream(tok, split(files, True))
    ev_ids, ev_tags = windows(va_ids, va_tags, ctx.count(cfg.eval_windows), L, torch.Generator().manual_seed(21))
    n = size.n_layer
    variants = {"causal (none removed)": ["causal"] * n,
                "top half bidirectional": ["causal"] * (n - n // 2) + ["bidirectional"] * (n // 2),
                "bottom half bidirectional": ["bidirectional"] * (n // 2) + ["causal"] * (n - n // 2),
                "all bidirectional": ["bidirectional"] * n}
    rows = []
    ft_steps = ctx.steps(cfg.finetune_steps, 16)
    for name, policies in variants.items():
        gpt = GPT(GPTConfig(**{**base.config.to_dict(), "attention": policies}))
        gpt.load_state_dict(base.state_dict())
        torch.manual_seed(ctx.seed)
        model = Tagger(gpt, len(TAGS))
        make_batch = lambda step, g: windows(tr_ids, tr_tags, size.batch_size, L, g)  # noqa: E731
        curves[name] = fit(ctx, "finetune_" + name.split()[0], model, make_batch, ft_steps,
                           lambda: tag_loss(model, (ev_ids.to(ctx.device), ev_tags.to(ctx.device))).item(),
                           cfg.finetune_lr, size.batch_size, loss_fn=lambda m, b: tag_loss(m, tuple(x.to(ctx.device) for x in b)))
        rows.append({"variant": name, "layers": "".join("B" if p == "bidirectional" else "C" for p in policies),
                     **tag_metrics(model, ev_ids, ev_tags, ctx.device)})

    def figure(path):
        fig, ax = subplots(figsize=(7, 3.8))
        metrics = ["tag acc", "macro-F1", "call acc", "store acc"]
        grouped_bars(ax, rows, metrics)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title("Python token-role tagging: causal mask removed in which layers")
        save(fig, path)

    notes = [f"pretrain: causal GPT {n}x{size.n_embd} on stdlib code, {pre_steps} steps x {size.batch_size} rows of {L}; "
             f"fine-tune: {ft_steps} steps per variant on {len(tr_ids)} tagged tokens, eval on {ev_ids.numel()} held-out tokens; "
             "layers: C = causal, B = bidirectional (bottom layer first)"]
    return Result(rows, curves, {"tag_counts": torch.bincount(va_tags, minlength=len(TAGS)).tolist(), "tags": list(TAGS)},
                  figure, notes)
