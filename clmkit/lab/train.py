"""The lab's one training loop: AdamW, linear warmup + cosine decay, gradient clipping, seeded
batches, atomic safetensors + JSON checkpoints, resume, a rich progress bar, loss curves (JSON + PNG).

Batches are a pure function of (seed, step) — `make_batch(step, generator)` gets a generator seeded
with both — so a run resumed from a checkpoint trains on exactly the batches the uninterrupted run
would have, and ends with the same weights.

Checkpoint folder: model.safetensors, optimizer.safetensors (AdamW moments, flattened), state.json
(model config, train config, step, curves). Each file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from clmkit.errors import InputError
from clmkit.files import atomic_write


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    checkpoint_every: int = 100


def lr_at(step: int, c: TrainConfig) -> float:
    if step < c.warmup:
        return c.lr * (step + 1) / c.warmup
    progress = min(1.0, (step - c.warmup) / max(1, c.steps - c.warmup))
    return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, c: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT): norms, biases and embeddings-as-vectors skip it."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=c.lr, betas=(0.9, 0.95))


def batch_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(weights, p))
    if opt is not None:
        flat, names = {}, {id(p): n for n, p in model.named_parameters()}
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    flat[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().reshape(-1 if key == "step" else value.shape).contiguous()
        # the global RNG draws in-model randomness (lexinvariant embeddings): resume must continue it
        flat["__rng__::cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            flat["__rng__::cuda"] = torch.cuda.get_rng_state()
        atomic_write(folder / "optimizer.safetensors", lambda p: save_file(flat, p))
    atomic_write(folder / "state.json", lambda p: Path(p).write_text(json.dumps(state, indent=1)))


def load_checkpoint(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Load weights (and optimizer moments) in place; returns state.json."""
    try:
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read checkpoint {folder}: {e}") from None
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in weights.items()})
    if opt is not None and (folder / "optimizer.safetensors").exists():
        flat = load_file(str(folder / "optimizer.safetensors"))
        params = dict(model.named_parameters())
        for key, value in flat.items():
            name, field_name = key.split("::")
            if name == "__rng__":
                (torch.set_rng_state if field_name == "cpu" else torch.cuda.set_rng_state)(value)
                continue
            # AdamW keeps `step` on the CPU unless capturable; moments live with the parameters
            opt.state[params[name]][field_name] = value.reshape(()) if field_name == "step" else value.to(device)
    return state


@dataclass
class TrainResult:
    steps: list[int]
    train_loss: list[float]
    eval_steps: list[int]
    eval_loss: list[float]
    seconds: float
    resumed_from: int = 0

    def curves(self) -> dict:
        return asdict(self)


def train(model: torch.nn.Module, loss_fn: Callable, make_batch: Callable, c: TrainConfig, *,
          folder: Path | None = None, eval_fn: Callable[[], float] | None = None, device: str = "cpu",
          label: str = "train", progress: bool = True, model_config: dict | None = None) -> TrainResult:
    """Train `model` in place for c.steps steps of loss_fn(model, make_batch(step, generator)).

    With `folder`, checkpoints go there every c.checkpoint_every steps and at the end, and a run whose
    folder already holds a checkpoint of the same configs resumes from it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    model.to(device)
    opt = make_optimizer(model, c)
    result = TrainResult([], [], [], [], 0.0)
    start = 0
    identity = {"train_config": asdict(c), "model_config": model_config or {}}
    if folder is not None and (folder / "state.json").exists():
        state = json.loads((folder / "state.json").read_text())
        if {k: state.get(k) for k in identity} == json.loads(json.dumps(identity)):
            load_checkpoint(folder, model, opt)
            start = state["step"]
            result = TrainResult(**{**state["curves"], "resumed_from": start})
        else:  # say so: its files will be overwritten by this run's checkpoints
            from rich.console import Console

            Console(stderr=True).print(f"{folder}: checkpoint of a different configuration; training {label} from scratch",
                                       style="yellow", markup=False, highlight=False)
    if start == 0:
        torch.manual_seed(c.seed)  # in-model sampling (lexinvariant embeddings); a resume restored its state

    def checkpoint(step):
        if folder is not None:
            save_checkpoint(folder, model, opt, {**identity, "step": step, "curves": result.curves()})

    t0 = time.perf_counter() - result.seconds
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=c.steps, completed=start, loss="-")
        model.train()
        for step in range(start, c.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, c)
            batch = make_batch(step, batch_generator(c.seed, step))
            loss = loss_fn(model, batch.to(device) if hasattr(batch, "to") else batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            opt.step()
            result.steps.append(step + 1)
            result.train_loss.append(round(loss.item(), 5))
            last = step + 1 == c.steps
            if eval_fn is not None and ((step + 1) % c.eval_every == 0 or last):
                model.eval()
                with torch.no_grad():
                    result.eval_steps.append(step + 1)
                    result.eval_loss.append(round(float(eval_fn()), 5))
                model.train()
            result.seconds = round(time.perf_counter() - t0, 2)
            if (step + 1) % c.checkpoint_every == 0 or last:
                checkpoint(step + 1)
            bar.update(task, completed=step + 1, loss=f"{loss.item():.3f}")
    model.eval()
    return result


def smoothed(values: list[float], window: int = 10) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(curves: dict[str, TrainResult | dict], path: Path, title: str) -> None:
    """Train (smoothed) and eval loss of several runs on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, r) in enumerate(curves.items()):
        r = r.curves() if isinstance(r, TrainResult) else r
        color = f"C{i}"
        ax.plot(r["steps"], smoothed(r["train_loss"]), color=color, alpha=0.5, label=f"{name} train")
        if r["eval_steps"]:
            ax.plot(r["eval_steps"], r["eval_loss"], "o-", color=color, label=f"{name} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
