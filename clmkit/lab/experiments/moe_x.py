"""MoE-X: *Mixture of Experts Made Intrinsically Interpretable* (Yang et al., 2025).

Claim: a mixture of ReLU experts is one wide, sparsely activated MLP, and wide + sparse hidden layers
make neurons monosemantic. MoE-X routes each token to the experts whose ReLU activations would be
largest (sparsity-aware routing: the salient features win), so the active neurons are the ones that
fire strongly for that token. At equal active compute it should match a dense model's loss with more
interpretable neurons.

Variants (same GPT, same steps, FFN of every layer replaced; "active width" = hidden neurons a token uses):
  dense GELU      the standard MLP, 4d neurons
  dense ReLU      the same with ReLU
  top-k MoE       8 ReLU experts of 2d neurons, softmax router, top-2 (active 4d, total 16d)
  MoE-X           the same experts, routed by the norm of each expert's ReLU activation, top-2
Measured on held-out Python (the stdlib's own source): LM loss, and a monosemanticity score of the
last layer's FFN neurons on labelled token roles (keyword, call, attribute, string, number, ...,
from Python's tokenizer): each neuron's selectivity (mean activation on its best role minus the mean
over the other roles, over their sum; 1 = fires for one role only), averaged over live neurons, and the
fraction of live neurons with selectivity > 0.5.
Simplified: the paper approximates the routing score from the encoder weights to save compute and
probes chess-board features with auto-interpretation; here every expert's activation is computed
exactly (lab scale) and the features are Python token roles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from clmkit.lab.corpora import TAGS, corpus_streams, default_tokenizer, python_source_files, split, tag_tokens
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import Size, fit, fixed_eval, gpt_config, grouped_bars, save, subplots
from clmkit.lab.model import GPT, MLP, lm_loss
from clmkit.lab.objectives import next_token


@dataclass
class Config:
    steps: int = 1500
    lr: float = 1e-3
    n_experts: int = 8
    top_k: int = 2
    eval_files: int = 40
    live: float = 1e-3  # a neuron whose mean activation is below this is dead, not scored


class ReLUExperts(nn.Module):
    """E ReLU experts as two stacked weight tensors; `routing` = "softmax" (a learned router) or
    "sparsity" (MoE-X: the experts whose ReLU activations have the largest norm). `activations` holds
    the last forward's wide (N, E * h) hidden layer, zeros for unselected experts."""

    def __init__(self, d: int, n_experts: int, hidden: int, top_k: int, routing: str):
        super().__init__()
        self.top_k, self.routing = top_k, routing
        self.up = nn.Parameter(torch.randn(n_experts, d, hidden) * 0.02)
        self.down = nn.Parameter(torch.randn(n_experts, hidden, d) * 0.02)
        self.router = nn.Linear(d, n_experts, bias=False) if routing == "softmax" else None
        self.aux_loss = torch.zeros(())
        self.activations = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        act = F.relu(torch.einsum("nd,edh->neh", x, self.up))  # every expert's activation (N, E, h)
        scores = self.router(x) if self.router is not None else act.norm(dim=-1)
        probs = scores.softmax(-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        gate = torch.zeros_like(probs).scatter_(1, experts, weights / weights.sum(-1, keepdim=True))  # (N, E)
        hidden = act * gate[..., None]
        out = torch.einsum("neh,ehd->nd", hidden, self.down)
        chosen = torch.zeros_like(probs).scatter_(1, experts, 1.0)
        self.aux_loss = probs.shape[1] * ((chosen.mean(0) / self.top_k) * probs.mean(0)).sum()  # Switch balance
        self.activations = hidden.detach().reshape(len(x), -1)
        return out.view(shape)


class RecordedMLP(MLP):
    """The dense MLP with a choice of activation, keeping its last hidden activations."""

    def __init__(self, c, activation: str):
        super().__init__(c)
        self.activation = F.relu if activation == "relu" else F.gelu
        self.activations = None

    def forward(self, x):
        h = self.activation(self.up(x))
        self.activations = h.detach().reshape(-1, h.shape[-1])
        return self.down(h)


def build(tok, size: Size, variant: str, cfg: Config) -> GPT:
    model = GPT(gpt_config(tok, size))
    d = size.n_embd
    for block in model.blocks:
        if variant.startswith("dense"):
            block.ffn = RecordedMLP(model.config, "relu" if "ReLU" in variant else "gelu")
        else:
            # each expert 4d / top_k neurons: a token uses 4d, as in the dense MLP
            block.ffn = ReLUExperts(d, cfg.n_experts, 4 * d // cfg.top_k, cfg.top_k, "sparsity" if variant == "MoE-X" else "softmax")
    return model


def moe_loss(model: GPT, batch) -> torch.Tensor:
    logits = model(batch.input_ids)
    aux = sum((b.ffn.aux_loss for b in model.blocks if isinstance(b.ffn, ReLUExperts)), torch.zeros(()))
    return lm_loss(logits, batch.targets) + 0.01 * aux


def selectivity(acts: torch.Tensor, roles: torch.Tensor, live: float) -> dict:
    """Per-neuron selectivity over token roles: (best - mean of others) / (best + mean of others)."""
    present = torch.bincount(roles, minlength=len(TAGS)) > 0
    sums = torch.zeros(len(TAGS), acts.shape[1]).index_add_(0, roles, acts)
    means = (sums / torch.bincount(roles, minlength=len(TAGS)).clamp(min=1)[:, None])[present]  # (R, neurons)
    alive = acts.mean(0) > live
    best, _ = means.max(0)
    others = (means.sum(0) - best) / (means.shape[0] - 1)
    sel = ((best - others) / (best + others).clamp(min=1e-12))[alive]
    return {"live neurons": int(alive.sum()), "selectivity": round(sel.mean().item(), 4) if len(sel) else 0.0,
            "monosemantic (>0.5)": round((sel > 0.5).float().mean().item(), 4) if len(sel) else 0.0}


@register("moe-x", paper="Mixture of Experts Made Intrinsically Interpretable (MoE-X, Yang et al., 2025)",
          claim="wide sparse ReLU experts with sparsity-aware routing give more monosemantic neurons at equal loss")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("code", tok, small=ctx.tiny)
    L = size.block_size + 1
    steps = ctx.steps(cfg.steps)
    batch = lambda step, g: next_token(train_stream.windows(size.batch_size, L, g))  # noqa: E731
    val_batch = lambda i, g: next_token(val_stream.windows(size.batch_size, L, g))  # noqa: E731
    files = split(python_source_files(max_chars=300_000 if ctx.tiny else 1_500_000), True)[: ctx.count(cfg.eval_files, 4)]
    ids, roles = [], []
    for source in files:
        i, t = tag_tokens(tok, source)
        ids += i
        roles += t
    n = (len(ids) - 1) // size.block_size * size.block_size
    eval_ids = torch.tensor(ids[:n]).view(-1, size.block_size)
    eval_roles = torch.tensor(roles[:n])

    rows, curves = [], {}
    for variant in ("dense GELU", "dense ReLU", "top-k MoE", "MoE-X"):
        torch.manual_seed(ctx.seed)
        model = build(tok, size, variant, cfg)
        curves[variant] = fit(ctx, variant, model, batch, steps, lambda: fixed_eval(model, val_batch, ctx.count(4, 2), ctx.device),
                              cfg.lr, size.batch_size, loss_fn=moe_loss)
        model.eval()
        acts = []
        with torch.no_grad():
            for chunk in eval_ids.split(16):
                model(chunk.to(ctx.device))
                acts.append(model.blocks[-1].ffn.activations.cpu())
        width = acts[0].shape[1]
        rows.append({"variant": variant, "total neurons": width, "val loss": curves[variant].eval_loss[-1],
                     **selectivity(torch.cat(acts), eval_roles, cfg.live)})

    def figure(path):
        fig, axes = subplots(ncols=2, figsize=(8, 3.4))
        grouped_bars(axes[0], rows, ["selectivity", "monosemantic (>0.5)"])
        axes[0].set_title("last-layer FFN neurons vs Python token roles", fontsize=9)
        axes[0].legend(fontsize=7)
        axes[1].bar(range(len(rows)), [r["val loss"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        axes[1].set_xticks(range(len(rows)), [r["variant"] for r in rows], fontsize=7)
        axes[1].set_title("held-out LM loss", fontsize=9)
        save(fig, path)

    notes = [f"Python stdlib code; GPT {size.n_layer}x{size.n_embd}, {steps} steps x {size.batch_size} rows of {L - 1}; "
             f"experts: {cfg.n_experts} x {4 * size.n_embd // cfg.top_k} ReLU neurons, top-{cfg.top_k}; roles on {len(eval_roles)} held-out "
             f"tokens ({len(files)} files); neurons with mean activation < {cfg.live} are dead and not scored"]
    return Result(rows, curves, {"roles": list(TAGS)}, figure, notes)
