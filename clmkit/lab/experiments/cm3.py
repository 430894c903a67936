"""CM3: A Causal Masked Multimodal Model of the Internet (Aghajanyan et al., 2022).

Causal masking: a few spans of each document are cut out, a sentinel <s_i> is left in their place and
the spans are appended at the end after their sentinels; the model is trained with the plain
next-token loss on the rearranged document. It stays a left-to-right generator (most tokens are still
predicted in order) but, when it generates a moved span, it has already read the text on both sides.

Setting: HTML documents (the Python reference as <h1>/<p>/<pre> pages), same GPT and steps for a
causal LM and a CM3 model. Measured on held-out pages: left-to-right loss (plain next-token), and
infill loss / accuracy of a 12-token span: the causal LM sees only its left context, the CM3 model
gets the CM3 prompt (left <s0> right <s0>).
"""

from __future__ import annotations

from dataclasses import dataclass

from clmkit.lab.corpora import corpus_streams, default_tokenizer
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import save, subplots, Size, fit, fixed_eval, gpt_config, infill_scores, middle_spans
from clmkit.lab.model import GPT
from clmkit.lab.objectives import cm3, next_token

import torch


@dataclass
class Config:
    steps: int = 2000
    lr: float = 1e-3
    max_spans: int = 3
    mean_span: float = 8.0
    infill_span: int = 12
    eval_rows: int = 128
    eval_batches: int = 8


@register("cm3", paper="CM3: A Causal Masked Multimodal Model of the Internet (Aghajanyan et al., 2022)",
          claim="causal masking gives bidirectional context for infilling while staying a left-to-right generator")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("html", tok)
    L = size.block_size + 1
    steps = ctx.steps(cfg.steps)
    objectives = {
        "causal LM": lambda step, g: next_token(train_stream.windows(size.batch_size, L, g)),
        "CM3": lambda step, g: cm3(train_stream.windows(size.batch_size, L, g), tok, g, cfg.max_spans, cfg.mean_span),
    }
    l2r_batch = lambda i, g: next_token(val_stream.windows(size.batch_size, L, g))  # noqa: E731
    n_eval = ctx.count(cfg.eval_batches, 2)
    eval_rows = val_stream.windows(ctx.count(cfg.eval_rows), L, torch.Generator().manual_seed(11)).tolist()
    span = min(cfg.infill_span, L // 4)
    spans = middle_spans(eval_rows, span)
    rows, curves = [], {}
    for name, make_batch in objectives.items():
        torch.manual_seed(ctx.seed)
        model = GPT(gpt_config(tok, size))
        curves[name] = fit(ctx, name, model, make_batch, steps, lambda: fixed_eval(model, l2r_batch, n_eval, ctx.device),
                           cfg.lr, size.batch_size)
        left = infill_scores(model, tok, eval_rows, spans, "left", ctx.device)
        row = {"variant": name, "L2R loss": round(fixed_eval(model, l2r_batch, n_eval, ctx.device), 4),
               "infill loss, left only": left["loss"], "infill acc, left only": left["token_acc"]}
        if name == "CM3":
            both = infill_scores(model, tok, eval_rows, spans, "cm3", ctx.device)
            row.update({"infill loss, CM3 prompt": both["loss"], "infill acc, CM3 prompt": both["token_acc"]})
        rows.append(row)

    def figure(path):
        fig, ax = subplots(figsize=(6, 3.6))
        bars = [("causal LM\nL2R", rows[0]["L2R loss"]), ("CM3\nL2R", rows[1]["L2R loss"]),
                ("causal LM\ninfill (left)", rows[0]["infill loss, left only"]),
                ("CM3\ninfill (left)", rows[1]["infill loss, left only"]),
                ("CM3\ninfill (CM3 prompt)", rows[1]["infill loss, CM3 prompt"])]
        ax.bar(range(len(bars)), [v for _, v in bars], color=["C0", "C1", "C0", "C1", "C2"])
        ax.set_xticks(range(len(bars)), [k for k, _ in bars], fontsize=7)
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title(f"CM3 vs causal LM ({steps} steps, HTML pages)")
        save(fig, path)

    notes = [f"HTML pages of the Python reference; GPT {size.n_layer}x{size.n_embd}, rows of {L - 1} tokens, {steps} steps x "
             f"{size.batch_size}; CM3: 1..{cfg.max_spans} spans (Poisson(1)), mean {cfg.mean_span:g} tokens; "
             f"infill: one {span}-token span in each of {len(eval_rows)} held-out rows"]
    return Result(rows, curves, {"spans": spans}, figure, notes)
