"""Fine-tuning recipes from *Making the Most of your Model: Methods for Finetuning and Applying
Pretrained Transformers* (Yoshida, 2024, PhD thesis) — its two fine-tuning methods at small scale.

(a) Recurrence for a fixed-window decoder. A pretrained decoder sees at most its window of T tokens;
    the thesis fine-tunes it with a recurrence so each window also reads a state carried over from
    the previous one (longer context, and a smaller window for the same perplexity). Here the
    recurrence is Transformer-XL's segment recurrence: every layer's input hidden states of the
    previous segment are cached without gradient and attended to (keys/values) by the next segment;
    RoPE keeps positions relative, so the pretrained weights apply unchanged. One causal GPT is
    pretrained on T-token windows, then fine-tuned for equal steps on K consecutive segments of a
    long document, with and without the memory. Measured: held-out loss on long documents, split
    into the first segment (no memory for anyone) and later ones, and by position inside a segment
    (the first positions are where a fixed window has the least context).
(b) A non-autoregressive seq2seq model initialised from a masked LM. The lab GPT is pretrained with
    BERT's MLM objective (bidirectional attention), then fine-tuned as a one-pass, mask-predict-style
    NAR model: input `<task> src <sep> <mask> x len(tgt)`, read bidirectionally, every target token
    predicted at once at its mask. Tasks: copy and reverse a window of real prose tokens. The same
    NAR model from random init, same fine-tuning steps, is the baseline. Measured: greedy one-pass
    exact match and token accuracy on held-out windows.

Simplified: the thesis adds a small learned recurrence module to GPT-2 and trains through it (with
gradient checkpointing); ours caches the previous segment's hidden states with no gradient
(Transformer-XL) and adds no parameters. Its NAR method (RUM-SUNDAE) initialises both the encoder and
the decoder of an encoder–decoder from the MLM and decodes iteratively (SUNDAE unrolled denoising);
ours is one bidirectional stack over [source; masks] (the MLM itself, so nothing is new at init),
decoded in one pass, with the target length given (copy/reverse keep the length) instead of predicted.
Models are lab-sized (a few hundred k parameters at --size small), trained from scratch here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clmkit.lab.corpora import corpus_streams, default_tokenizer
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import Size, fit, fixed_eval, gpt_config, grouped_bars, save, subplots
from clmkit.lab.model import GPT, apply_rope, rope_tables
from clmkit.lab.objectives import IGNORE, Batch, mlm, next_token, pad_stack, py_rng

TASKS = ("copy", "reverse")


@dataclass
class Config:
    # (a) recurrence
    pretrain_steps: int = 1000   # fixed-window LM pretraining, shared by both fine-tunings
    finetune_steps: int = 400    # each fine-tuning; a step reads `segments` consecutive windows per row
    segments: int = 4            # consecutive segments per training row
    eval_segments: int = 8       # consecutive segments per held-out row
    eval_rows: int = 48
    # (b) NAR from MLM
    mlm_steps: int = 1500
    nar_steps: int = 1500
    # source length range (tokens). Fixed: with lengths 8..16 a 2x64 NAR model learned nothing in 500
    # steps (each mask must find its source token at an offset that depends on the length)
    nar_len: tuple[int, int] = (12, 12)
    nar_lr: float = 2e-3
    test_items: int = 256               # per task
    lr: float = 1e-3


# --- (a) segment recurrence --------------------------------------------------------------------

def check_recurrent(model: GPT) -> None:
    c = model.config
    if c.position != "rope" or c.n_encoder_layer or set(c.layer_policies()) != {"causal"}:
        raise ValueError("segment recurrence needs a causal decoder-only GPT with RoPE (relative positions)")


def attend_with_memory(attn, h: torch.Tensor, context: torch.Tensor, cos, sin) -> torch.Tensor:
    """`attn`'s weights, queries from the segment `h` (B, T, C), keys/values from `context` =
    [memory; h] (B, M + T, C). Query t sits at position M + t: causal over the concatenation."""
    B, T, C = h.shape
    S = context.shape[1]
    M = S - T
    q = attn.q(h).view(B, T, attn.n_head, -1).transpose(1, 2)
    k, v = attn.kv(context).view(B, S, 2, attn.n_head, -1).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(q, cos[M:], sin[M:]), apply_rope(k, cos, sin)
    mask = torch.arange(S, device=h.device)[None, :] <= (M + torch.arange(T, device=h.device))[:, None]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


def segment_forward(model: GPT, idx: torch.Tensor, mems: list[torch.Tensor] | None = None,
                    mem_len: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits (B, T, V) of one segment and the new memory: per layer, the last `mem_len` (default T)
    layer-input hidden states of [old memory; this segment], detached — the next segment reads
    them but no gradient flows back into the segment that made them (Transformer-XL)."""
    check_recurrent(model)
    B, T = idx.shape
    mem_len = mem_len or T
    M = 0 if mems is None else mems[0].shape[1]
    cos, sin = rope_tables(M + T, model.config.n_embd // model.config.n_head, model.config.rope_base, idx.device)
    x = model.wte(idx)
    new_mems = []
    for layer, block in enumerate(model.blocks):
        new_mems.append((x if mems is None else torch.cat([mems[layer], x], 1))[:, -mem_len:].detach())
        h = block.ln1(x)
        context = h if mems is None else torch.cat([block.ln1(mems[layer]), h], 1)
        x = x + attend_with_memory(block.attn, h, context, cos, sin)
        x = x + block.ffn(block.ln2(x))
    return model.logits(model.ln_f(x)), new_mems


def segment_losses(model: GPT, rows: torch.Tensor, segment: int, recurrent: bool) -> torch.Tensor:
    """Per-token next-token loss (B, n_segments * segment) of rows of n_segments * segment + 1 tokens,
    read one fixed window at a time, with (recurrent) or without the previous window's memory."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    mems, out = None, []
    for start in range(0, inputs.shape[1], segment):
        logits, new_mems = segment_forward(model, inputs[:, start:start + segment], mems)
        mems = new_mems if recurrent else None
        tgt = targets[:, start:start + segment]
        out.append(F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none"))
    return torch.cat(out, 1)


def long_doc_eval(model: GPT, rows: torch.Tensor, segment: int, recurrent: bool, device: str) -> torch.Tensor:
    """(n_segments, segment) mean held-out loss by segment index and position inside the segment."""
    with torch.no_grad():
        losses = torch.cat([segment_losses(model, rows[i:i + 16].to(device), segment, recurrent).cpu()
                            for i in range(0, len(rows), 16)])
    return losses.view(len(rows), -1, segment).mean(0)


# --- (b) non-autoregressive seq2seq ------------------------------------------------------------

def nar_row(tok, src: list[int], task: str) -> tuple[list[int], list[int]]:
    """(input, targets): `<task> src <sep> <mask>...` with the target tokens as targets at the masks
    only; the input never contains a target token, so one bidirectional pass must produce them all."""
    tgt = src if task == "copy" else src[::-1]
    head = [tok.sentinels[TASKS.index(task)], *src, tok.sep]
    return head + [tok.mask] * len(tgt), [IGNORE] * len(head) + list(tgt)


def nar_batch(tok, items: list[tuple[list[int], str]]) -> Batch:
    rows = [nar_row(tok, src, task) for src, task in items]
    inputs = pad_stack([r for r, _ in rows], tok.pad)
    targets = pad_stack([t for _, t in rows], IGNORE)
    pad = pad_stack([[0] * len(r) for r, _ in rows], 1).bool()
    return Batch(inputs, targets, pad=pad)


def nar_items(stream, n: int, lengths: tuple[int, int], g: torch.Generator) -> list[tuple[list[int], str]]:
    rng = py_rng(g)
    out = []
    for _ in range(n):
        length = rng.randint(*lengths)
        start = rng.randrange(len(stream.ids) - length)
        out.append((stream.ids[start:start + length].tolist(), rng.choice(TASKS)))
    return out


def nar_accuracy(model: GPT, tok, items, device: str) -> dict:
    """One-pass greedy decoding: exact match and token accuracy per task."""
    out = {}
    for task in TASKS:
        batch = nar_batch(tok, [it for it in items if it[1] == task]).to(device)
        with torch.no_grad():
            pred = model(batch.input_ids, pad=batch.pad).argmax(-1)
        real = batch.targets != IGNORE
        hit = (pred == batch.targets) & real
        out[f"{task} exact"] = round((hit.sum(1) == real.sum(1)).float().mean().item(), 4)
        out[f"{task} token acc"] = round((hit.sum() / real.sum()).item(), 4)
    return out


# --- the experiment ----------------------------------------------------------------------------

@register("finetune-recipes", paper="Making the Most of your Model: Methods for Finetuning and Applying Pretrained Transformers (Yoshida, 2024)",
          claim="a recurrence fine-tuned into a fixed-window decoder lowers long-document perplexity; "
                "an MLM initialises a non-autoregressive seq2seq model better than random init")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx, block_size=64)
    T = size.block_size  # the fixed window: 64, 32 at --size small
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("reference", tok)
    rows, curves, extra = [], {}, {}

    # (a) pretrain a fixed-window LM, then fine-tune it on K-segment rows with / without memory
    K, K_eval = cfg.segments, (3 if ctx.tiny else cfg.eval_segments)
    eval_rows = val_stream.windows(ctx.count(cfg.eval_rows, 4), K_eval * T + 1, torch.Generator().manual_seed(7))
    torch.manual_seed(ctx.seed)
    base = GPT(gpt_config(tok, size))
    lm_batch = lambda step, g: next_token(train_stream.windows(size.batch_size, T + 1, g))  # noqa: E731
    curves["pretrain-lm"] = fit(ctx, "pretrain-lm", base, lm_batch, ctx.steps(cfg.pretrain_steps), None, cfg.lr, size.batch_size)
    by_position = {"pretrained, fixed window": long_doc_eval(base, eval_rows, T, False, ctx.device)}
    long_batch = lambda step, g: train_stream.windows(size.batch_size, K * T + 1, g)  # noqa: E731
    for name, recurrent in (("fixed-window", False), ("recurrence", True)):
        model = copy.deepcopy(base)
        loss = lambda m, r, rec=recurrent: segment_losses(m, r, T, rec).mean()  # noqa: E731
        held_out = lambda m=model, rec=recurrent: long_doc_eval(m, eval_rows[:8], T, rec, ctx.device)[1:].mean()  # noqa: E731
        curves[name] = fit(ctx, name, model, long_batch, ctx.steps(cfg.finetune_steps), held_out, cfg.lr / 2,
                           size.batch_size, loss_fn=loss)
        by_position[f"fine-tuned, {name}"] = long_doc_eval(model, eval_rows, T, recurrent, ctx.device)
        if recurrent:  # the same weights with the memory switched off: is the gain the memory's?
            by_position["fine-tuned recurrence, memory off"] = long_doc_eval(model, eval_rows, T, False, ctx.device)
    q = max(1, T // 4)
    for name, table in by_position.items():
        later = table[1:]
        rows.append({"variant": name, "segment 1 loss": round(table[0].mean().item(), 4),
                     "segments 2+ loss": round(later.mean().item(), 4),
                     "segments 2+ ppl": round(later.mean().exp().item(), 2),
                     f"pos 1-{q} loss": round(later[:, :q].mean().item(), 4),
                     f"pos {T - q + 1}-{T} loss": round(later[:, -q:].mean().item(), 4)})
    extra["loss_by_position"] = {k: [round(x, 4) for x in v[1:].mean(0).tolist()] for k, v in by_position.items()}

    # (b) MLM pretraining, then NAR fine-tuning from it vs from random init
    nar_block = 2 * cfg.nar_len[1] + 2
    lengths = (4, 4) if ctx.tiny else cfg.nar_len
    torch.manual_seed(ctx.seed)
    mlm_model = GPT(gpt_config(tok, size, attention="bidirectional", block_size=max(nar_block, size.block_size + 16)))
    mlm_batch = lambda step, g: mlm(train_stream.windows(size.batch_size, T, g), tok, g)  # noqa: E731
    curves["mlm-pretrain"] = fit(ctx, "mlm-pretrain", mlm_model, mlm_batch, ctx.steps(cfg.mlm_steps), None, cfg.lr, size.batch_size)
    tests = nar_items(val_stream, 2 * ctx.count(cfg.test_items), lengths, torch.Generator().manual_seed(11))
    train_batch = lambda step, g: nar_batch(tok, nar_items(train_stream, size.batch_size, lengths, g))  # noqa: E731
    nar_eval = lambda step, g: nar_batch(tok, nar_items(val_stream, 32, lengths, g))  # noqa: E731
    for name in ("nar-from-mlm", "nar-from-scratch"):
        torch.manual_seed(ctx.seed + 1)
        model = copy.deepcopy(mlm_model) if name == "nar-from-mlm" else GPT(mlm_model.config)
        curves[name] = fit(ctx, name, model, train_batch, ctx.steps(cfg.nar_steps),
                           lambda m=model: fixed_eval(m, nar_eval, 2, ctx.device), cfg.nar_lr, size.batch_size)
        rows.append({"variant": f"NAR {name[4:].replace('-', ' ')}", "NAR target loss": round(fixed_eval(model, nar_eval, 4, ctx.device), 4),
                     **nar_accuracy(model, tok, tests, ctx.device)})

    def figure(path):
        fig, (ax1, ax2) = subplots(2, figsize=(11, 3.8))
        for name, losses in extra["loss_by_position"].items():
            ax1.plot(range(1, T + 1), losses, label=name)
        ax1.set_xlabel(f"position inside the {T}-token window (segments 2..{K_eval})")
        ax1.set_ylabel("held-out loss (nats/token)")
        ax1.set_title("(a) segment recurrence")
        ax1.legend(fontsize=7)
        nar = [r for r in rows if r["variant"].startswith("NAR")]
        grouped_bars(ax2, nar, [f"{t} {m}" for t in TASKS for m in ("exact", "token acc")])
        ax2.set_ylim(0, 1.02)
        ax2.set_title("(b) one-pass NAR copy / reverse")
        ax2.legend(fontsize=7)
        save(fig, path)

    notes = [f"(a) Python reference prose; causal GPT {size.n_layer}x{size.n_embd}, window T={T}; pretrain "
             f"{ctx.steps(cfg.pretrain_steps)} steps x {size.batch_size} windows, then {ctx.steps(cfg.finetune_steps)} "
             f"fine-tuning steps x {size.batch_size} rows of {K} consecutive windows each; held-out: {len(eval_rows)} rows "
             f"of {K_eval} consecutive windows (memory = the previous window, no gradient)",
             f"(b) bidirectional GPT, MLM 15% ({ctx.steps(cfg.mlm_steps)} steps x {size.batch_size} rows of {T}), then "
             f"{ctx.steps(cfg.nar_steps)} NAR steps per variant; copy/reverse of {'..'.join(map(str, sorted(set(lengths))))} held-out prose "
             f"tokens, {len(tests)} test items, one-pass greedy"]
    return Result(rows, curves, extra, figure, notes)
