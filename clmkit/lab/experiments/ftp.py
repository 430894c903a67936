"""Future Token Prediction: Causal Language Modelling with Per-Token Semantic State Vector for
Multi-Token Prediction (Walker, 2024).

FTP gives every position t a semantic state vector s_t (a projection of the top hidden state) that
must carry the *future*, not only the next token: a small decoder reads s_t and predicts the next W
tokens, and s_t is pulled toward the pooled embedding of those W tokens. The claim: s_t makes a better
sequence-level embedding (topic / continuation) than a next-token LM's hidden state, at a similar
next-token loss.

Setting: natural prose (the Python reference); a next-token GPT vs the same GPT + FTP heads
(s_t = Linear(h_t); decoder: s_t + a learned offset embedding for each of the W future slots ->
2-layer MLP -> tied vocabulary logits; pooled target: mean input embedding of the next W tokens,
cosine loss). Loss = next-token CE + future CE (mean over slots, at every 4th position to bound the cost)
+ 0.5 (1 - cos).
Probes on held-out text (frozen models, no training): next-token loss; continuation retrieval
(embed the first half of a window, find its true second half among K windows by cosine); same-
document 1-NN (is a window's nearest neighbour from the same document?). Sequence embedding =
mean over positions of h_t (baseline) or s_t (FTP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clmkit.lab.corpora import TokenStream, default_tokenizer, reference_documents, split
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import grouped_bars, save, subplots, Size, fit, gpt_config
from clmkit.lab.model import GPT, lm_loss
from clmkit.lab.objectives import IGNORE, future_targets, next_token


@dataclass
class Config:
    steps: int = 2000
    lr: float = 1e-3
    window: int = 8            # W future tokens
    stride: int = 4            # future-token losses at every 4th position (the V-way logits are W times the cost)
    probe_docs: int = 24
    probe_len: int = 64
    candidates: int = 16


class FTP(torch.nn.Module):
    def __init__(self, gpt: GPT, window: int):
        super().__init__()
        c = gpt.config
        self.gpt, self.config, self.window = gpt, c, window
        self.state = torch.nn.Linear(c.n_embd, c.n_embd)                 # the semantic state vector s_t
        self.slot = torch.nn.Parameter(torch.randn(window, c.n_embd) * 0.02)
        self.decoder = torch.nn.Sequential(torch.nn.LayerNorm(c.n_embd), torch.nn.Linear(c.n_embd, 2 * c.n_embd),
                                           torch.nn.GELU(), torch.nn.Linear(2 * c.n_embd, c.n_embd), torch.nn.LayerNorm(c.n_embd))

    def forward(self, idx, **kw):
        h = self.gpt.hidden(idx)
        return self.gpt.logits(h), h, self.state(h)

    def future_logits(self, s):
        """(B, T, W, V): the small decoder's prediction of each of the next W tokens from s_t."""
        return self.gpt.logits(self.decoder(s[:, :, None, :] + self.slot))

    def aux_loss(self):
        return self.gpt.aux_loss()


def ftp_loss(model: FTP, rows: torch.Tensor, stride: int = 1) -> torch.Tensor:
    batch = next_token(rows)
    logits, _, s = model(batch.input_ids)
    future = future_targets(rows, model.window)                                  # (B, T, W)
    s, future = s[:, ::stride], future[:, ::stride]
    future_ce = F.cross_entropy(model.future_logits(s).flatten(0, 2), future.flatten(), ignore_index=IGNORE)
    valid = (future != IGNORE)
    emb = model.gpt.wte(future.clamp(min=0)) * valid[..., None]
    pooled = emb.sum(2) / valid.sum(2, keepdim=True).clamp(min=1)               # mean future embedding
    cos = F.cosine_similarity(s, pooled.detach(), dim=-1)[valid.any(-1)]
    return lm_loss(logits, batch.targets) + future_ce + 0.5 * (1 - cos).mean()


def embed_windows(model, windows: torch.Tensor, device: str, ftp: bool) -> torch.Tensor:
    with torch.no_grad():
        if ftp:
            _, _, vec = model(windows.to(device))
        else:
            vec = model.hidden(windows.to(device))
    return F.normalize(vec.mean(1).cpu(), dim=-1)


def probes(model, tok, docs: list[str], cfg: Config, device: str, ftp: bool, next_rows: torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(31)
    doc_ids = [tok.encode(d) for d in docs]
    doc_ids = [d for d in doc_ids if len(d) >= 4 * cfg.probe_len][: cfg.probe_docs]
    wins, labels = [], []
    for k, d in enumerate(doc_ids):                       # 4 windows from each document
        for j in range(4):
            s = j * (len(d) - cfg.probe_len) // 4
            wins.append(d[s:s + cfg.probe_len])
            labels.append(k)
    wins, labels = torch.tensor(wins), torch.tensor(labels)
    half = cfg.probe_len // 2
    first, second = embed_windows(model, wins[:, :half], device, ftp), embed_windows(model, wins[:, half:], device, ftp)
    sims = first @ second.T
    n = len(wins)
    hits = 0
    for i in range(n):                                    # true second half vs K-1 random others
        others = torch.randperm(n - 1, generator=g)[: cfg.candidates - 1]
        others = others + (others >= i).long()
        hits += int(sims[i, i] > sims[i, others].max())
    full = embed_windows(model, wins, device, ftp)
    nn_sim = full @ full.T
    nn_sim.fill_diagonal_(-2)
    same_doc = (labels[nn_sim.argmax(1)] == labels).float().mean().item()
    batch = next_token(next_rows).to(device)
    with torch.no_grad():
        out = model(batch.input_ids)
        logits = out[0] if ftp else out
    return {"next-token loss": round(lm_loss(logits, batch.targets).item(), 4),
            f"continuation top-1 of {cfg.candidates}": round(hits / n, 4), "same-doc 1-NN": round(same_doc, 4),
            "probe windows": n}


@register("ftp", paper="Future Token Prediction: causal LM with a per-token semantic state vector (Walker, 2024)",
          claim="a per-token state vector trained to predict a window of future tokens gives better sequence embeddings")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    docs = reference_documents()
    train_stream = TokenStream.from_docs(tok, split(docs, False))
    val_docs = split(docs, True)
    val_stream = TokenStream.from_docs(tok, val_docs)
    L = size.block_size + 1
    steps = ctx.steps(cfg.steps)
    next_rows = val_stream.windows(ctx.count(64), L, torch.Generator().manual_seed(41))
    if ctx.tiny:
        cfg.probe_len, cfg.candidates = 16, 4
    torch.manual_seed(ctx.seed)
    base = GPT(gpt_config(tok, size))
    torch.manual_seed(ctx.seed)
    ftp = FTP(GPT(gpt_config(tok, size)), cfg.window)
    rows_of = lambda step, g: train_stream.windows(size.batch_size, L, g)  # noqa: E731
    curves = {
        "next-token": fit(ctx, "next_token", base, lambda s, g: next_token(rows_of(s, g)), steps,
                          lambda: lm_loss(base(next_rows[:, :-1].to(ctx.device)), next_rows[:, 1:].to(ctx.device)).item(),
                          cfg.lr, size.batch_size),
        "FTP": fit(ctx, "ftp", ftp, rows_of, steps,
                   lambda: lm_loss(ftp(next_rows[:, :-1].to(ctx.device))[0], next_rows[:, 1:].to(ctx.device)).item(),
                   cfg.lr, size.batch_size, loss_fn=lambda m, rows: ftp_loss(m, rows.to(ctx.device), cfg.stride)),
    }
    rows = [{"variant": "next-token (mean h_t)", **probes(base, tok, val_docs, cfg, ctx.device, False, next_rows)},
            {"variant": "FTP (mean s_t)", **probes(ftp, tok, val_docs, cfg, ctx.device, True, next_rows)}]

    def figure(path):
        fig, ax = subplots(figsize=(6, 3.6))
        metrics = [k for k in rows[0] if k not in ("variant", "next-token loss", "probe windows")]
        grouped_bars(ax, [{**r, "label": f"{r['variant']} (next-token loss {r['next-token loss']:.3f})"} for r in rows],
                     metrics, label="label")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        ax.set_title("FTP vs next-token: sequence-embedding probes")
        save(fig, path)

    notes = [f"Python reference prose; GPT {size.n_layer}x{size.n_embd}, rows of {L - 1}, {steps} steps x {size.batch_size}; "
             f"FTP window W={cfg.window}; probes on held-out documents, windows of {cfg.probe_len} tokens; "
             f"chance: continuation 1/{cfg.candidates}"]
    return Result(rows, curves, {}, figure, notes)
