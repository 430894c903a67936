"""Pieces every experiment uses: the model size, the loss, held-out evaluation, log-likelihood scoring."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clmkit.lab.model import GPT, GPTConfig, lm_loss
from clmkit.lab.objectives import IGNORE, Batch
from clmkit.lab.train import TrainConfig, train


@dataclass
class Size:
    """The lab model size. `--size small` (a loaded or slow machine) halves depth, width and row length
    (about 1/8 of the compute per step); `tiny` (tests) shrinks everything to seconds."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    batch_size: int = 16

    @classmethod
    def for_ctx(cls, ctx, **overrides) -> "Size":
        block = overrides.get("block_size", 128)
        if ctx.tiny:
            return cls(n_layer=2, n_head=2, n_embd=32, block_size=block // 4, batch_size=4)
        if ctx.size == "small":
            return cls(**{**overrides, "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": block // 2})
        return cls(**overrides)


def gpt_config(tok, size: Size, **overrides) -> GPTConfig:
    # +16: room for the sentinels / markers an objective adds to a block_size row
    base = dict(vocab_size=tok.vocab_size, block_size=size.block_size + 16, n_layer=size.n_layer,
                n_head=size.n_head, n_embd=size.n_embd)
    return GPTConfig(**{**base, **overrides})


def lm_objective_loss(model: GPT, batch: Batch) -> torch.Tensor:
    """Cross-entropy on the batch's targets (+ the MoE balance loss, 0.01-weighted, if any)."""
    logits = model(batch.input_ids, **batch.model_inputs())
    return lm_loss(logits, batch.targets) + 0.01 * model.aux_loss().to(logits.device)


def target_logits(model: GPT, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (N, V) at the N positions that have a target, those targets (N,), and where they are (B, T).
    Why: for a one-token answer the (B, T, V) vocabulary projection is most of a small model's step
    (2x64 GPT, 4k vocabulary: ~10x the layers' work); hidden states are computed for every position,
    logits only where a loss or a score needs them."""
    h = model.hidden(batch.input_ids, **batch.model_inputs())
    where = batch.targets != IGNORE
    return model.logits(h[where]), batch.targets[where], where


def answer_loss(model: GPT, batch: Batch) -> torch.Tensor:
    """`lm_objective_loss` with logits only at the targets: the same number, faster when few positions have one."""
    logits, targets, _ = target_logits(model, batch)
    return F.cross_entropy(logits.float(), targets) + 0.01 * model.aux_loss().to(logits.device)


def fixed_eval(model: GPT, make_batch, n_batches: int, device: str, seed: int = 12345) -> float:
    """Mean loss over `n_batches` batches drawn with a fixed seed (the same for every variant)."""
    total = 0.0
    with torch.no_grad():
        for i in range(n_batches):
            batch = make_batch(i, torch.Generator().manual_seed(seed + i)).to(device)
            total += lm_objective_loss(model, batch).item()
    return total / n_batches


def fit(ctx, name: str, model: GPT, make_batch, steps: int, eval_fn=None, lr: float = 1e-3, batch_size: int = 16,
        loss_fn=lm_objective_loss):
    lr = lr * 5 if ctx.tiny else lr  # smoke runs: a few steps must visibly learn
    c = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=ctx.seed, warmup=max(1, min(50, steps // 10)),
                    eval_every=max(1, steps // 6), checkpoint_every=max(1, steps // 3))
    return train(model, loss_fn, make_batch, c, folder=ctx.run_dir(name), eval_fn=eval_fn,
                 device=ctx.device, label=name, progress=ctx.progress, model_config=model.config.to_dict())


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) log p(target) with 0 where target == IGNORE."""
    logp = F.log_softmax(logits.float(), -1)
    safe = targets.clamp(min=0)
    out = logp.gather(-1, safe[..., None])[..., 0]
    return out.masked_fill(targets == IGNORE, 0.0)


def score(model: GPT, batch: Batch, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row summed log-likelihood of the targets, their count, and how many were the argmax."""
    batch = batch.to(device)
    with torch.no_grad():
        logits, targets, where = target_logits(model, batch)
    row = where.nonzero()[:, 0]  # row-major, the order of `targets`
    lp = F.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    hit = (logits.argmax(-1) == targets).float()
    zeros = torch.zeros(where.shape[0], device=lp.device)
    return (zeros.index_add(0, row, lp).cpu(), where.sum(-1).cpu(),
            zeros.index_add(0, row, hit).long().cpu())


def middle_spans(rows: list[list[int]], span: int, seed: int = 3) -> list[tuple[int, int]]:
    """One [a, b) span of `span` tokens per row, uniformly placed with context on both sides."""
    g = torch.Generator().manual_seed(seed)
    return [(a, a + span) for a in (int(torch.randint(len(r) // 4, len(r) - span - len(r) // 4, (1,), generator=g)) for r in rows)]


def infill_scores(model: GPT, tok, rows: list[list[int]], spans, mode: str, device: str) -> dict:
    """Loss (nats/token) and teacher-forced token accuracy of the span tokens, given
      left      the left context only (what a causal LM can use)
      cm3       the CM3 layout: left <s0> right <s0> span
      codegen2  the CodeGen2 layout: left <s0> right <sep> <s0> span"""
    from clmkit.lab.objectives import rearrange_spans, shifted

    seqs, starts = [], []
    for row, (a, b) in zip(rows, spans):
        if mode == "left":
            seq = row[:b]
        elif mode in ("cm3", "codegen2"):
            seq = rearrange_spans(row, [(a, b)], tok, infill_markers=mode == "codegen2")
            seq = seq[:-1] if mode == "codegen2" else seq  # drop <eom>: score the span tokens only
        else:
            raise ValueError(mode)
        seqs.append(seq)
        starts.append(len(seq) - (b - a))
    lp, n, correct = score(model, shifted(seqs, tok, loss_from=starts), device)
    return {"loss": round(-lp.sum().item() / n.sum().item(), 4), "token_acc": round(correct.sum().item() / n.sum().item(), 4)}


def subplots(ncols: int = 1, figsize=(7, 3.8)):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize)


def save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grouped_bars(ax, rows: list[dict], metrics: list[str], label: str = "variant") -> None:
    """One group of bars per metric, one bar per row."""
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([k + i * w for k in range(len(metrics))], [r[m] for m in metrics], w, label=str(r[label]))
    ax.set_xticks([k + 0.4 - w / 2 for k in range(len(metrics))], metrics, fontsize=8)
