"""`clm train data` (self-distillation data + feature cache) and `clm train NAME` (one trained drafter)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

train_app = typer.Typer(no_args_is_help=True, help="Train draft modules for trained drafters (heads, fspad, ...).")


def default_folder(model: str) -> Path:
    return Path("runs") / "train" / Path(model).name


def command_line(ctx: typer.Context) -> str:
    """The running `clm train ...` command with every option spelled out (defaults included), so the
    command recorded beside a checkpoint recreates it even if a default changes later."""
    words = ["clm", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == [] or value == ():
            continue
        if getattr(param, "is_flag", False) and param.secondary_opts:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [param.opts[0], str(item)]
        else:
            words += [param.opts[0], str(value)]
    return " ".join(shlex.quote(w) for w in words)


@train_app.command("data")
def train_data(
    ctx: typer.Context,
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Where distill.jsonl and features/ go (default runs/train/MODEL)."),
    prompts: int = typer.Option(192, "--prompts", help="Prompts answered greedily."),
    sampled_fraction: float = typer.Option(0.25, "--sampled-fraction", help="Share of them also answered by sampling (T=0.7)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    batch_size: int = typer.Option(24, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
):
    """The target's own responses to prompts the speed benchmark never samples, then its hidden states
    of them cached to disk (memory-mapped). Resumable: generation continues where it stopped."""
    from clmkit.cli import user_errors
    from clmkit.errors import InputError
    from clmkit.models import load
    from clmkit.train.data import build_distill_data
    from clmkit.train.features import build_feature_cache

    with user_errors():
        if prompts < 1 or max_new_tokens < 1 or batch_size < 1 or not 0 <= sampled_fraction <= 1:
            raise InputError("--prompts, --max-new-tokens, --batch-size must be >= 1 and --sampled-fraction in [0, 1]")
        target = load(model)
        folder = folder or default_folder(model)
        data = build_distill_data(target, folder / "distill.jsonl", prompts, max_new_tokens, sampled_fraction,
                                  batch_size, seed=seed)
        cache = build_feature_cache(target, data, folder / "features", seed=seed)
        (folder / "data_command.txt").write_text(command_line(ctx) + "\n")
        print(f"feature cache: {cache}")


def method_command(name: str):
    """`clm train NAME`: one command per trained drafter, all running the same loop."""

    def command(
        ctx: typer.Context,
        model: str = typer.Option("smollm2-135m", "--model", "-m"),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Feature cache folder (default runs/train/MODEL/features)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Checkpoint NAME.safetensors (default runs/train/MODEL/NAME.safetensors)."),
        steps: int = typer.Option(300, "--steps"),
        batch_size: int = typer.Option(8, "--batch-size"),
        length: int = typer.Option(96, "--length", help="Tokens per training window."),
        lr: float = typer.Option(1e-3, "--lr"),
        eval_every: int = typer.Option(50, "--eval-every"),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
        option: list[str] = typer.Option([], "--option", "-O", help="Module option KEY=VALUE, e.g. -O heads=4."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from NAME.state.pt if present."),
        until: Optional[int] = typer.Option(None, "--until", help="Stop after this step, as an interruption would (the same command without it resumes and finishes)."),
    ):
        import torch

        from clmkit.cli import parse_options, user_errors
        from clmkit.errors import InputError
        from clmkit.models import load
        from clmkit.train import module_class
        from clmkit.train.features import FeatureCache
        from clmkit.train.loop import TargetParts, TrainConfig, train

        with user_errors():
            if steps < 1 or batch_size < 1 or length < 4 or eval_every < 1 or not lr > 0 or (until is not None and until < 1):
                raise InputError("--steps, --batch-size, --eval-every, --until must be >= 1, --length >= 4, --lr > 0")
            try:
                dev = torch.device(device)
            except RuntimeError:
                raise InputError(f"unknown --device {device!r}") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise InputError("--device cuda: no CUDA device is available to this torch build")
            target = load(model)
            features = FeatureCache(cache or default_folder(model) / "features")
            features.check_model(target)
            cls = module_class(name)
            if hasattr(cls, "for_target"):  # modules that need the whole target (lexical: LoRA on a copy of it)
                module = cls.for_target(target, **parse_options(option))
            else:
                module = cls(TargetParts.of(target.module), **parse_options(option))
            weights = out or default_folder(model) / f"{name}.safetensors"
            cfg = TrainConfig(steps=steps, batch_size=batch_size, length=length, lr=lr, eval_every=eval_every,
                              seed=seed, device=device)
            config = train(module, target, features, weights, cfg, command_line(ctx), resume=resume, until=until)
            print(f"checkpoint: {weights} (+ .json, .curves.png); top-1 by position: "
                  + ", ".join(f"{a:.3f}" for a in config["eval"].get("top1", [])))

    command.__doc__ = f"Train the {name!r} drafter's module on a feature cache; checkpoint + curves beside --out."
    return command


def register(app: typer.Typer) -> None:
    """Mount `clm train data` and `clm train NAME` (one per trained drafter) into the `train` group,
    shared with other modules' training commands (created here if no other module made it)."""
    from clmkit.train import trainable

    group = next((g.typer_instance for g in app.registered_groups if g.name == "train"), None)
    if group is None:
        group = train_app
        app.add_typer(train_app, name="train", help="Training commands.")
    else:
        group.command("data")(train_data)
    for name in trainable():
        group.command(name)(method_command(name))
