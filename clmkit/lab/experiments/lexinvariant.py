"""Lexinvariant Language Models (Huang et al., 2023).

A lexinvariant LM has no fixed token embeddings: for every sequence a fresh Gaussian matrix
E ~ N(0, 1/d) of shape (vocab, d) is drawn, the input embedding of token v is E[v] and the output
logits are h @ E^T (tied). The model can only tell tokens apart by how they co-occur in the context,
so it must decipher the "lexicon" in context: its perplexity is worse than a standard LM's at the
start of a sequence and the gap should shrink as the context grows. Because it is invariant to any
relabelling of tokens, it models a substitution-ciphered text exactly as well as the plain one
(in-context symbol manipulation), where a standard LM fails.

Setting: natural prose (the Python reference corpus), same GPT, same steps; measured: held-out loss by
position bucket for both models, and on the same windows with a per-sequence random cipher applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.lab.corpora import corpus_streams, default_tokenizer
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import save, subplots, Size, fit, gpt_config, token_logprobs
from clmkit.lab.model import GPT, lm_loss
from clmkit.lab.objectives import next_token


@dataclass
class Config:
    steps: int = 1500
    block_size: int = 256
    batch_size: int = 8
    lr: float = 1e-3
    eval_windows: int = 64
    embedding_std: float | None = None  # None: 1/sqrt(d), so initial logits are O(1)


def random_embeddings(batch: int, vocab: int, dim: int, std: float, g: torch.Generator | None = None, device="cpu"):
    """One fresh (vocab, dim) Gaussian embedding matrix per sequence: (batch, vocab, dim)."""
    return torch.randn(batch, vocab, dim, generator=g).mul_(std).to(device)


class Lexinvariant(torch.nn.Module):
    """A GPT whose embeddings are redrawn per sequence on every forward (the learned `wte` is unused)."""

    def __init__(self, gpt: GPT, std: float):
        super().__init__()
        self.gpt, self.std, self.config = gpt, std, gpt.config

    def forward(self, idx, g: torch.Generator | None = None, **kw):
        E = random_embeddings(idx.shape[0], self.config.vocab_size, self.config.n_embd, self.std, g, idx.device)
        return self.gpt(idx, embedding=E, **kw)

    def aux_loss(self):
        return self.gpt.aux_loss()


def cipher(rows: torch.Tensor, vocab: int, g: torch.Generator) -> torch.Tensor:
    """Relabel every token of each row by its own random permutation of the vocabulary."""
    perms = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows.shape[0])])
    return torch.gather(perms, 1, rows)


def position_losses(model, rows: torch.Tensor, device: str, lexinvariant: bool) -> torch.Tensor:
    """(T,) mean loss at each position over the rows."""
    batch = next_token(rows).to(device)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        logits = model(batch.input_ids, g=g) if lexinvariant else model(batch.input_ids)
    return -token_logprobs(logits, batch.targets).mean(0).cpu()


BUCKETS = [(0, 8), (8, 32), (32, 64), (64, 128), (128, 256)]


@register("lexinvariant", paper="Lexinvariant Language Models (Huang et al., 2023)",
          claim="the perplexity gap to a standard LM shrinks with context length; in-context symbol manipulation")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx, block_size=cfg.block_size, batch_size=cfg.batch_size)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("reference", tok)
    T = size.block_size
    make_batch = lambda step, g: next_token(train_stream.windows(size.batch_size, T + 1, g))  # noqa: E731
    steps = ctx.steps(cfg.steps)

    std_model = GPT(gpt_config(tok, size))
    torch.manual_seed(ctx.seed)
    lex_model = Lexinvariant(GPT(gpt_config(tok, size)), cfg.embedding_std or size.n_embd ** -0.5)
    eval_rows = val_stream.windows(ctx.count(cfg.eval_windows), T + 1, torch.Generator().manual_seed(99))
    ciphered = cipher(eval_rows, tok.vocab_size, torch.Generator().manual_seed(5))

    def eval_std():
        return lm_loss(std_model(eval_rows[:, :-1].to(ctx.device)), eval_rows[:, 1:].to(ctx.device)).item()

    def eval_lex():
        rows = eval_rows.to(ctx.device)
        return lm_loss(lex_model(rows[:, :-1], g=torch.Generator().manual_seed(7)), rows[:, 1:]).item()

    curves = {"standard": fit(ctx, "standard", std_model, make_batch, steps, eval_std, cfg.lr, size.batch_size),
              "lexinvariant": fit(ctx, "lexinvariant", lex_model, make_batch, steps, eval_lex, cfg.lr, size.batch_size)}

    per_pos = {
        "standard": position_losses(std_model, eval_rows, ctx.device, False),
        "lexinvariant": position_losses(lex_model, eval_rows, ctx.device, True),
        "standard, ciphered text": position_losses(std_model, ciphered, ctx.device, False),
        "lexinvariant, ciphered text": position_losses(lex_model, ciphered, ctx.device, True),
    }
    buckets = [(a, min(b, T)) for a, b in BUCKETS if a < T]
    rows = []
    for name, losses in per_pos.items():
        row = {"variant": name, "loss all": round(losses.mean().item(), 4)}
        for a, b in buckets:
            row[f"pos {a + 1}-{b}"] = round(losses[a:b].mean().item(), 4)
        rows.append(row)
    gap = {f"pos {a + 1}-{b}": round((per_pos["lexinvariant"][a:b].mean() - per_pos["standard"][a:b].mean()).item(), 4)
           for a, b in buckets}
    rows.append({"variant": "gap (lexinvariant - standard)", **gap})

    def figure(path):
        fig, ax = subplots(figsize=(7, 4))
        window = max(1, T // 32)
        for name, losses in per_pos.items():
            smooth = torch.nn.functional.avg_pool1d(losses[None, None], window, 1)[0, 0]
            ax.plot(range(window, len(losses) + 1), smooth, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("position in sequence (tokens of context)")
        ax.set_ylabel("held-out loss (nats/token)")
        ax.set_title("lexinvariant vs standard LM: loss by context length")
        ax.legend(fontsize=8)
        save(fig, path)

    notes = [f"corpus: Python reference prose; GPT {size.n_layer}x{size.n_embd}, context {T}, {steps} steps x "
             f"{size.batch_size} rows; {len(eval_rows)} held-out windows; cipher = a random vocabulary permutation per row"]
    return Result(rows, curves, {"per_position": {k: [round(x, 4) for x in v.tolist()] for k, v in per_pos.items()}},
                  figure, notes)
