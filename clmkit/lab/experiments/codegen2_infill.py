"""CodeGen2: Lessons for Training LLMs on Programming and Natural Languages (Nijkamp et al., 2023).

CodeGen2 asks which recipe gives a code LM infilling without hurting left-to-right generation. Its
findings: a prefix-LM (bidirectional over a random prefix) brings no gain; a *mixture* of causal LM
and span corruption with the spans moved to the end (left <s0> right <sep> <s0> span <eom>) learns
to infill at little cost to left-to-right loss.

Setting: Python standard-library source; three models with the same GPT and steps: causal LM,
prefix-LM, causal + infill mixture (50/50 per row). Measured on held-out files: left-to-right loss
(next-token, causal mask; the prefix-LM is evaluated with an empty prefix) and infill loss / accuracy
of a 12-token span given the left context only, or the CodeGen2 infill prompt (mixture model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.lab.corpora import corpus_streams, default_tokenizer
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import save, subplots, Size, fit, fixed_eval, gpt_config, infill_scores, middle_spans
from clmkit.lab.model import GPT
from clmkit.lab.objectives import infill_mixture, next_token, prefix_lm


@dataclass
class Config:
    steps: int = 1500
    lr: float = 1e-3
    p_infill: float = 0.5
    max_spans: int = 3
    mean_span: float = 8.0
    infill_span: int = 12
    eval_rows: int = 128
    eval_batches: int = 8


@register("codegen2-infill", paper="CodeGen2: Lessons for Training LLMs on Programming and Natural Languages (Nijkamp et al., 2023)",
          claim="a causal LM + span-infill mixture learns infilling without hurting left-to-right loss; prefix-LM brings no gain")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("code", tok, small=ctx.tiny)
    L = size.block_size + 1
    steps = ctx.steps(cfg.steps)
    variants = {  # name -> (attention policy, objective)
        "causal LM": ("causal", lambda step, g: next_token(train_stream.windows(size.batch_size, L, g))),
        "prefix-LM": ("prefix", lambda step, g: prefix_lm(train_stream.windows(size.batch_size, L, g), g)),
        "causal + infill mixture": ("causal", lambda step, g: infill_mixture(
            train_stream.windows(size.batch_size, L, g), tok, g, cfg.p_infill, cfg.max_spans, cfg.mean_span)),
    }

    def l2r_batch(i, g):
        batch = next_token(val_stream.windows(size.batch_size, L, g))
        batch.prefix_len = torch.zeros(size.batch_size, dtype=torch.long)  # prefix-LM read left to right
        return batch

    n_eval = ctx.count(cfg.eval_batches, 2)
    eval_rows = val_stream.windows(ctx.count(cfg.eval_rows), L, torch.Generator().manual_seed(11)).tolist()
    span = min(cfg.infill_span, L // 4)
    spans = middle_spans(eval_rows, span)
    rows, curves = [], {}
    for name, (policy, make_batch) in variants.items():
        torch.manual_seed(ctx.seed)
        model = GPT(gpt_config(tok, size, attention=policy))
        curves[name] = fit(ctx, name.replace(" ", "_"), model, make_batch, steps,
                           lambda: fixed_eval(model, l2r_batch, n_eval, ctx.device), cfg.lr, size.batch_size)
        left = infill_scores(model, tok, eval_rows, spans, "left", ctx.device) if policy == "causal" else None
        row = {"variant": name, "L2R loss": round(fixed_eval(model, l2r_batch, n_eval, ctx.device), 4)}
        if left:
            row.update({"infill loss, left only": left["loss"], "infill acc, left only": left["token_acc"]})
        if name == "causal + infill mixture":
            both = infill_scores(model, tok, eval_rows, spans, "codegen2", ctx.device)
            row.update({"infill loss, infill prompt": both["loss"], "infill acc, infill prompt": both["token_acc"]})
        rows.append(row)

    def figure(path):
        fig, (a1, a2) = subplots(2, figsize=(8, 3.6))
        a1.bar(range(len(rows)), [r["L2R loss"] for r in rows], color=["C0", "C1", "C2"])
        a1.set_xticks(range(len(rows)), [r["variant"].replace(" + ", "\n+ ") for r in rows], fontsize=7)
        a1.set_ylabel("left-to-right loss (nats/token)")
        infill = [("causal LM\nleft only", rows[0]["infill loss, left only"]),
                  ("mixture\nleft only", rows[2]["infill loss, left only"]),
                  ("mixture\ninfill prompt", rows[2]["infill loss, infill prompt"])]
        a2.bar(range(3), [v for _, v in infill], color=["C0", "C2", "C3"])
        a2.set_xticks(range(3), [k for k, _ in infill], fontsize=7)
        a2.set_ylabel(f"span infill loss ({span} tokens)")
        fig.suptitle(f"CodeGen2 recipes on stdlib code ({steps} steps)")
        save(fig, path)

    notes = [f"Python stdlib source (tests excluded); GPT {size.n_layer}x{size.n_embd}, rows of {L - 1} tokens, {steps} steps x "
             f"{size.batch_size}; mixture p_infill={cfg.p_infill}, 1..{cfg.max_spans} spans of mean {cfg.mean_span:g}; "
             f"infill: one {span}-token span in each of {len(eval_rows)} held-out rows"]
    return Result(rows, curves, {"spans": spans}, figure, notes)
