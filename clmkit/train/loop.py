"""The one training loop (nanoGPT style): feature cache -> draft module loss -> AdamW.

    for step in range(steps):
        batch = cache.train_batch(step)          # a pure function of (seed, step): resumable
        loss = module.loss(batch)                # the method's own loss on frozen target features
        loss.backward(); clip; AdamW step with a warmup + cosine learning rate
        every eval_every steps: top-1/top-k accuracy of each future position on held-back sequences,
                                curves saved, checkpoint + resume state written atomically

A draft module (each trained drafter's nn.Module) provides:
    method: str, options: dict, depth: int    (future positions it predicts)
    loss(batch) -> (loss, {name: float})
    position_logits(batch) -> [(p, logits [B, L, vocab])]   position p predicts the token p + 1 after
                                                              each input position (depth p in the tree)
and is built as `cls(parts, **options)` with the frozen target pieces (`TargetParts`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from clmkit.train.checkpoint import save_checkpoint, save_state, target_signature
from clmkit.train.features import Batch, FeatureCache


@dataclass
class TargetParts:
    """The frozen pieces of the target a draft module uses: token embedding and LM head (never trained,
    never saved in a draft checkpoint)."""

    embed: torch.Tensor  # [vocab, d]
    lm_head: torch.Tensor  # [vocab, d]
    lm_bias: torch.Tensor | None = None
    head_bf16: torch.Tensor | None = None  # a bf16 copy of lm_head where this CPU multiplies bf16 natively
    module: torch.nn.Module | None = None  # the whole frozen target (hidden-transfer runs its upper layers)

    @classmethod
    def of(cls, module) -> "TargetParts":
        head = module.get_output_embeddings()
        return cls(module.get_input_embeddings().weight.detach(), head.weight.detach(),
                   None if getattr(head, "bias", None) is None else head.bias.detach(), module=module).to("cpu")

    def to(self, device) -> "TargetParts":
        device = torch.device(device)
        # The vocabulary projection is nearly all of a draft head's compute; on AMX / AVX512-BF16 CPUs
        # it runs ~4x faster in bf16 (measured here: 0.19 s vs 0.82 s for 1024 x 576 x 49152). Draft
        # quality may change slightly; losslessness cannot (the target verifies every draft).
        fast = self.lm_head.to(device, torch.bfloat16) if device.type == "cpu" and cpu_has_bf16() else None
        return TargetParts(self.embed.to(device), self.lm_head.to(device),
                           None if self.lm_bias is None else self.lm_bias.to(device), fast,
                           None if self.module is None else self.module.to(device))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The target's LM head applied to draft features h [..., d] -> [..., vocab] float32."""
        if self.head_bf16 is not None:
            out = (h.to(torch.bfloat16) @ self.head_bf16.T).float()
        else:
            out = h @ self.lm_head.to(h.dtype).T
        return out if self.lm_bias is None else out + self.lm_bias


def cpu_has_bf16() -> bool:
    try:
        from clmkit.backends.kernels import cpu_has_bf16 as probe
    except ImportError:  # the backends package is issue 9's; without it, stay in fp32
        return False
    return probe()


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    length: int = 96  # tokens per training window
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4  # held-back batches per evaluation (the first N of the fixed eval set)
    topk: int = 10  # ranks tracked per position: top-k accuracy and the rank-acceptance rates
    seed: int = 0
    device: str = "cpu"


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(module, batches: list[Batch], topk: int, device) -> dict:
    """Per future position p: top-1 and top-k accuracy, and rank_probs[r] = how often the right token
    is the draft's rank-r candidate (the acceptance rates a static tree is built from)."""
    module.eval()
    hits = torch.zeros(module.depth, topk)
    counts = torch.zeros(module.depth)
    for batch in batches:
        batch = batch.to(device)
        for p, logits in module.position_logits(batch):
            labels, mask = batch.labels(p + 1)
            top = logits.topk(topk, -1).indices  # [B, L, k]
            rank_hit = (top == labels[..., None]) & mask[..., None]
            hits[p - 1] += rank_hit.sum((0, 1)).float().cpu()
            counts[p - 1] += mask.sum().float().cpu()
    module.train()
    rank_probs = hits / counts.clamp(min=1)[:, None]
    return {"top1": rank_probs[:, 0].tolist(), f"top{topk}": rank_probs.sum(1).tolist(),
            "rank_probs": rank_probs.tolist(), "labels": counts.tolist()}


def plot_curves(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(curves["step"], curves["loss"], lw=0.8)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    evals = curves["eval"]
    for p in range(len(evals[0]["top1"]) if evals else 0):
        ax2.plot([e["step"] for e in evals], [e["top1"][p] for e in evals], marker="o", label=f"position {p + 1} top-1")
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-back accuracy")
    ax2.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(module, model, cache: FeatureCache, weights: Path, cfg: TrainConfig, command: str,
          resume: bool = True, quiet: bool = False, until: int | None = None) -> dict:
    """Train `module` from `cache`; write `weights` (+ .json, .state.pt, curves .json/.png) as it goes.
    `until` stops after that step, as an interruption would (the next call resumes). Returns the
    checkpoint config last written."""
    cache.check_model(model)
    if getattr(module, "feature_layer", None) is not None:  # a drafter reading an intermediate layer
        cache.use_layer(model, module.feature_layer)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    module.to(device).train()
    module.parts = module.parts.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    state_path = weights.with_suffix(".state.pt")
    curves = {"step": [], "loss": [], "eval": []}
    start, tokens_seen = 0, 0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["method"] == module.method and state["options"] == module.options and state["train"]["seed"] == cfg.seed:
            module.load_state_dict(state["module"])
            opt.load_state_dict(state["optimizer"])
            start, tokens_seen, curves = state["step"], state["tokens_seen"], state["curves"]
    eval_set = cache.eval_batches(cfg.batch_size, cfg.length)[: cfg.eval_batches]

    def checkpoint(step: int) -> dict:
        result = curves["eval"][-1] if curves["eval"] else {}
        config = {"method": module.method, **target_signature(model), "options": module.options,
                  "command": command, "step": step, "tokens_seen": tokens_seen, "train": asdict(cfg),
                  "feature_cache": str(cache.folder), "train_response_tokens": cache.train_tokens,
                  "eval": {k: v for k, v in result.items() if k != "rank_probs"},
                  "rank_probs": result.get("rank_probs")}
        save_checkpoint(weights, module, config)
        save_state(state_path, {"method": module.method, "options": module.options, "train": asdict(cfg),
                                "module": module.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                "tokens_seen": tokens_seen, "curves": curves})
        weights.with_suffix(".curves.json").write_text(json.dumps(curves))
        return config

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}  {task.fields[tps]:.0f} tok/s"), TimeRemainingColumn()]
    config = None
    t0, window_tokens = time.perf_counter(), 0
    with Progress(*columns, disable=quiet) as progress:
        task = progress.add_task(f"train {module.method}", total=cfg.steps, completed=start, loss=float("nan"), tps=0.0)
        for step in range(start, min(cfg.steps, until or cfg.steps)):
            batch = cache.train_batch(cfg.batch_size, cfg.length, step, cfg.seed).to(device)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            loss, _ = module.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            n = int(batch.valid.sum())
            tokens_seen += n
            window_tokens += n
            curves["step"].append(step + 1)
            curves["loss"].append(float(loss.detach()))
            tps = window_tokens / (time.perf_counter() - t0)
            progress.update(task, advance=1, loss=curves["loss"][-1], tps=tps)
            if (step + 1) % cfg.eval_every == 0 or step + 1 in (cfg.steps, until):
                result = evaluate(module, eval_set, cfg.topk, device)
                curves["eval"].append({"step": step + 1, "tokens_seen": tokens_seen, **result})
                progress.console.print(f"step {step + 1}: loss {curves['loss'][-1]:.3f}, top-1 by position "
                                       + ", ".join(f"{a:.3f}" for a in result["top1"]), highlight=False)
                config = checkpoint(step + 1)
    plot_curves(curves, weights.with_suffix(".curves.png"), f"{module.method} on {model.name}: {tokens_seen:,} tokens")
    return config if config is not None else json.loads(weights.with_suffix(".json").read_text())
