"""FactorLLM: *Factorizing Knowledge via Mixture of Experts for Large Language Models* (Zhao et al., 2024).

A trained dense FFN is factorised, without retraining it, into a mixture of experts: its hidden
neurons are split into E groups (each group with its rows of the up/gate matrices and columns of the
down matrix is one expert), and a small router learns which k experts a token needs. FactorLLM's
Prior-Approximate Router (PAR) learns from the dense FFN itself: the target for each token is the set
of experts whose activations carry the most mass. Claim: with a little data the factorised model keeps
most of the dense quality while running a fraction k/E of the FFN.

Setting: (1) a lab GPT trained on prose, each layer's MLP factorised into 8 experts; (2) the embedded
SmolLM2-135M, each of its 30 SwiGLU FFNs (1,536 neurons) factorised into 8 experts of 192. Routers
(one linear layer per FFN) are trained by PAR on a few thousand tokens; the rest of the model is frozen.
Measured: held-out loss / perplexity with k of 8 experts active, for the trained router, an oracle
router (the true top-k by activation mass: the ceiling of any router) and random experts (the floor);
then (lab GPT) a short fine-tune of the factorised model with k of 8 experts routed by the frozen PAR
router, next to the dense model fine-tuned for the same steps (the control: the dense model too is
still improving).
Simplified: neurons are split contiguously (the paper's split); the fine-tune keeps the PAR router
frozen (the paper trains it alongside) and is not run on SmolLM2 (CPU budget); the FLOP saving is
counted, not timed: masked neurons are zeroed, not skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from clmkit.lab.corpora import corpus_streams, default_tokenizer, reference_documents, split
from clmkit.lab.experiments import Context, Result, register
from clmkit.lab.experiments._common import Size, fit, fixed_eval, gpt_config, save, subplots
from clmkit.lab.model import GPT, MLP
from clmkit.lab.objectives import next_token

ROUTINGS = ("router (PAR)", "oracle", "random")


@dataclass
class Config:
    steps: int = 1500          # dense pre-training of the lab model
    n_experts: int = 8
    ks: tuple[int, ...] = (1, 2, 4, 8)
    router_steps: int = 300
    router_tokens: int = 4096  # PAR training data per FFN
    ft_ks: tuple[int, ...] = (2, 4)
    ft_steps: int = 600        # fine-tuning the factorised lab GPT (x --scale), and the dense control
    ft_lr: float = 3e-4
    embedded: bool = True      # also factorise the embedded SmolLM2-135M (CPU-minutes of its own)
    embedded_chars: int = 40_000


class GeluHidden(nn.Module):
    """The lab MLP's hidden activation gelu(up x): a module, so fine-tuning reaches its weights."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.up = mlp.up

    def forward(self, x):
        return F.gelu(self.up(x))


class SwiGLUHidden(nn.Module):
    """A Llama-style FFN's hidden activation act(gate x) * (up x)."""

    def __init__(self, mlp):
        super().__init__()
        self.gate_proj, self.up_proj, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.act_fn

    def forward(self, x):
        return self.act_fn(self.gate_proj(x)) * self.up_proj(x)


class FactorisedFFN(nn.Module):
    """Wraps a dense FFN as E experts over contiguous neuron groups. `hidden(x)` is the dense FFN's
    hidden activation (N, n); `out(h)` its output projection. Routing per token: `mode` in ROUTINGS."""

    def __init__(self, hidden: nn.Module, out: nn.Module, width: int, d: int, n_experts: int):
        super().__init__()
        if width % n_experts:
            raise ValueError(f"{width} neurons do not split into {n_experts} equal experts")
        self.hidden, self.out, self.n_experts = hidden, out, n_experts
        self.router = nn.Linear(d, n_experts)
        self.k, self.mode = n_experts, "oracle"
        self.record: list | None = None  # PAR data collection: (inputs, expert mass)

    def mass(self, h: torch.Tensor) -> torch.Tensor:
        """(N, E) activation mass of each expert: the L2 norm of its neurons' activations."""
        return h.view(*h.shape[:-1], self.n_experts, -1).norm(dim=-1)

    def forward(self, x):
        h = self.hidden(x)
        if self.record is not None:
            self.record.append((x.detach().reshape(-1, x.shape[-1]), self.mass(h).detach().reshape(-1, self.n_experts)))
        if self.k >= self.n_experts:
            return self.out(h)
        if self.mode == "oracle":
            scores = self.mass(h)
        elif self.mode == "random":
            scores = torch.rand(*h.shape[:-1], self.n_experts, generator=torch.Generator().manual_seed(0)).to(h)
        else:
            scores = self.router(x)
        keep = torch.zeros_like(scores).scatter_(-1, scores.topk(self.k, dim=-1).indices, 1.0)
        return self.out((h.view(*h.shape[:-1], self.n_experts, -1) * keep[..., None]).reshape(h.shape))


def train_router(ffn: FactorisedFFN, data: list, k: int, steps: int, seed: int) -> float:
    """PAR: fit the router to the dense FFN's own top-k experts (multi-label BCE) on `data`, the
    (inputs, expert mass) pairs it recorded; returns the router's top-k recall of the true top-k."""
    x = torch.cat([a for a, _ in data])
    mass = torch.cat([m for _, m in data])
    target = torch.zeros_like(mass).scatter_(1, mass.topk(k, dim=1).indices, 1.0)
    torch.manual_seed(seed)
    nn.init.zeros_(ffn.router.bias)
    nn.init.normal_(ffn.router.weight, std=0.02)
    opt = torch.optim.Adam(ffn.router.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(ffn.router(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        chosen = torch.zeros_like(mass).scatter_(1, ffn.router(x).topk(k, dim=1).indices, 1.0)
    return ((chosen * target).sum() / target.sum()).item()


def factorise_lab(model: GPT, n_experts: int) -> list[FactorisedFFN]:
    ffns = []
    for block in model.blocks:
        mlp: MLP = block.ffn
        f = FactorisedFFN(GeluHidden(mlp), mlp.down, mlp.up.out_features, mlp.up.in_features, n_experts)
        block.ffn = f
        ffns.append(f)
    return ffns


def factorise_hf(module, n_experts: int) -> list[FactorisedFFN]:
    """Llama-style SwiGLU FFNs (gate_proj, up_proj, down_proj, act_fn), e.g. SmolLM2."""
    ffns = []
    for layer in module.model.layers:
        mlp = layer.mlp
        f = FactorisedFFN(SwiGLUHidden(mlp), mlp.down_proj, mlp.up_proj.out_features, mlp.up_proj.in_features, n_experts)
        layer.mlp = f
        ffns.append(f)
    return ffns


def sweep(ffns: list[FactorisedFFN], ks, evaluate, collect, router_steps: int, seed: int) -> tuple[list[dict], dict, dict]:
    """Loss for every (routing, k); the PAR routers trained per k on what the dense FFNs record
    while `collect()` runs. Also returns each k's trained router weights (k -> one state per FFN)."""
    for f in ffns:
        f.k, f.record = f.n_experts, []
    collect()
    data = [f.record for f in ffns]
    for f in ffns:
        f.record = None
    results, recall, routers = [], {}, {}
    dense = evaluate()
    for k in ks:
        if k < ffns[0].n_experts:
            recall[k] = sum(train_router(f, d, k, router_steps, seed) for f, d in zip(ffns, data)) / len(ffns)
            routers[k] = [copy.deepcopy(f.router.state_dict()) for f in ffns]
        for mode in ROUTINGS:
            for f in ffns:
                f.k, f.mode = k, mode
            results.append({"k": k, "routing": mode, "loss": evaluate() if k < ffns[0].n_experts else dense})
    return results, {"dense": dense, "router_recall": recall}, routers


def finetune(ctx, name: str, model: GPT, ffns: list[FactorisedFFN], k: int, routers: list[dict] | None, make_batch,
             steps: int, eval_fn, lr: float, batch_size: int):
    """Fine-tune the whole factorised model with k experts routed by the (frozen) PAR router trained
    for that k; k = n_experts is the dense model (every neuron on): the control."""
    for f, state in zip(ffns, routers or [None] * len(ffns)):
        f.k, f.mode = k, "router (PAR)"
        if state is not None:
            f.router.load_state_dict(state)
        f.router.requires_grad_(False)
    return fit(ctx, name, model, make_batch, steps, eval_fn, lr, batch_size)


def lm_loss_on(module, ids: torch.Tensor, window: int = 512) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, window):
            chunk = ids[s:s + window + 1]
            logits = module(input_ids=chunk[None, :-1]).logits[0]
            total += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
            count += len(chunk) - 1
    return total / count


@register("factorllm", paper="FactorLLM: Factorizing Knowledge via Mixture of Experts for Large Language Models (Zhao et al., 2024)",
          claim="a dense FFN factorised into experts with a prior-approximate router keeps quality at a fraction of FFN compute")
def run(ctx: Context) -> Result:
    cfg = Config()
    size = Size.for_ctx(ctx)
    tok = default_tokenizer()
    train_stream, val_stream = corpus_streams("reference", tok)
    L = size.block_size + 1
    steps = ctx.steps(cfg.steps)
    val_batch = lambda i, g: next_token(val_stream.windows(size.batch_size, L, g))  # noqa: E731
    n_eval = ctx.count(8, 2)
    torch.manual_seed(ctx.seed)
    model = GPT(gpt_config(tok, size))
    train_batch = lambda step, g: next_token(train_stream.windows(size.batch_size, L, g))  # noqa: E731
    evaluate = lambda: fixed_eval(model, val_batch, n_eval, ctx.device)  # noqa: E731
    curves = {"dense GPT": fit(ctx, "dense GPT", model, train_batch, steps, evaluate, 1e-3, size.batch_size)}
    model.eval()
    ffns = factorise_lab(model, cfg.n_experts)
    par_rows = train_stream.windows(max(1, ctx.count(cfg.router_tokens, 256) // size.block_size), L, torch.Generator().manual_seed(3))
    router_steps = ctx.count(cfg.router_steps, 20)

    def collect_lab():
        with torch.no_grad():
            model(par_rows[:, :-1].to(ctx.device))

    lab, lab_info, lab_routers = sweep(ffns, cfg.ks, evaluate, collect_lab, router_steps, ctx.seed)
    rows = [{"variant": f"lab GPT, k={r['k']}/{cfg.n_experts}", "routing": r["routing"], "loss": round(r["loss"], 4),
             "FFN compute": f"{r['k'] / cfg.n_experts:.0%}"} for r in lab]

    # the paper's brief fine-tune of the factorised model, and the dense model fine-tuned alike
    ft_steps, factorised = ctx.steps(cfg.ft_steps), copy.deepcopy(model.state_dict())
    fine_tuned = []
    for k in (*cfg.ft_ks, cfg.n_experts):
        model.load_state_dict(factorised)
        name = f"fine-tuned k={k}" if k < cfg.n_experts else "dense, fine-tuned (control)"
        curves[name] = finetune(ctx, name, model, ffns, k, lab_routers.get(k), train_batch, ft_steps, evaluate, cfg.ft_lr, size.batch_size)
        model.eval()
        fine_tuned.append({"k": k, "loss": evaluate(), "steps": ft_steps})
        rows.append({"variant": f"lab GPT, k={k}/{cfg.n_experts}, fine-tuned {ft_steps} steps",
                     "routing": "router (PAR)" if k < cfg.n_experts else "dense", "loss": round(fine_tuned[-1]["loss"], 4),
                     "FFN compute": f"{k / cfg.n_experts:.0%}"})
    model.load_state_dict(factorised)
    extra = {"lab": lab, "lab_info": lab_info, "lab_fine_tuned": fine_tuned}

    if cfg.embedded and not ctx.tiny:
        from clmkit.models import load

        smol = load("smollm2-135m")
        text = "\n\n".join(split(reference_documents(), True))
        ids = torch.tensor(smol.tokenizer(text[: cfg.embedded_chars])["input_ids"])
        train_ids, test_ids = ids[: cfg.router_tokens], ids[cfg.router_tokens:]
        hf_ffns = factorise_hf(smol.module, cfg.n_experts)

        def collect_hf():
            lm_loss_on(smol.module, train_ids)

        emb, emb_info, _ = sweep(hf_ffns, cfg.ks, lambda: lm_loss_on(smol.module, test_ids), collect_hf, cfg.router_steps, ctx.seed)
        rows += [{"variant": f"SmolLM2-135M, k={r['k']}/{cfg.n_experts}", "routing": r["routing"], "loss": round(r["loss"], 4),
                  "FFN compute": f"{r['k'] / cfg.n_experts:.0%}"} for r in emb]
        extra.update(embedded=emb, embedded_info=emb_info, embedded_test_tokens=len(test_ids))

    def figure(path):
        panels = [("lab GPT", lab, lab_info)] + ([("SmolLM2-135M", extra["embedded"], extra["embedded_info"])] if "embedded" in extra else [])
        fig, axes = subplots(ncols=len(panels), figsize=(5 * len(panels), 3.5))
        axes = axes if len(panels) > 1 else [axes]
        for ax, (title, results, info) in zip(axes, panels):
            for mode in ROUTINGS:
                pts = [r for r in results if r["routing"] == mode]
                ax.plot([r["k"] for r in pts], [r["loss"] for r in pts], marker="o", label=mode)
            ax.axhline(info["dense"], color="grey", ls="--", lw=0.8, label="dense")
            if title == "lab GPT":  # after the short fine-tune: factorised (k < E) and the dense control (k = E)
                ft = extra["lab_fine_tuned"]
                ax.plot([r["k"] for r in ft], [r["loss"] for r in ft], marker="*", ls=":", label="fine-tuned (k=8: dense control)")
            ax.set_xlabel(f"experts active (of {cfg.n_experts})")
            ax.set_ylabel("held-out loss")
            ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        save(fig, path)

    notes = [f"lab GPT {size.n_layer}x{size.n_embd} trained {steps} steps on prose, then frozen; each FFN split into "
             f"{cfg.n_experts} contiguous neuron groups; PAR routers: {router_steps} Adam steps on "
             f"{par_rows.numel()} (lab) / {cfg.router_tokens} (SmolLM2) tokens; fine-tune (lab GPT): {ft_steps} steps "
             f"x {size.batch_size} rows at lr {cfg.ft_lr}, PAR router frozen, k = {cfg.ft_ks}, and the dense model alike"]
    return Result(rows, curves, extra, figure, notes)
