"""Checkpoints: a draft module's trained weights as safetensors + a JSON config, both written atomically.

    NAME.safetensors   the trained tensors only (fp16 by default), never the frozen target's
    NAME.json          method, target model, hidden size, vocab size, module options, the exact
                       command that made it, steps, tokens seen, last evaluation, rank-acceptance rates
    NAME.state.pt      (training only) fp32 weights, optimizer state and curves, for resuming

A checkpoint made for one target loads only into a target with the same hidden size and vocabulary:
anything else is a clear InputError, not a shape error deep inside torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clmkit.errors import InputError
from clmkit.files import atomic_write

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "drafters" / "checkpoints"


def config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def target_signature(model) -> dict:
    config = model.module.config.get_text_config(decoder=True)
    return {"model": model.name, "hidden_size": int(config.hidden_size), "vocab_size": int(model.vocab_size)}


def save_checkpoint(weights: Path, module: torch.nn.Module, config: dict, dtype: torch.dtype = torch.float16) -> None:
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in module.state_dict().items()}
    atomic_write(weights, lambda p: save_file(tensors, str(p)))
    atomic_write(config_path(weights), lambda p: p.write_text(json.dumps(config, indent=1)))


def read_config(weights: Path) -> dict:
    cfg = config_path(weights)
    if not weights.is_file() or not cfg.is_file():
        raise InputError(f"draft checkpoint not found: {weights} (and its {cfg.name}); train one with `clm train`")
    try:
        config = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"draft checkpoint config {cfg} is not valid JSON (corrupt or truncated)") from None
    if not isinstance(config, dict) or not {"method", "hidden_size", "vocab_size", "options"} <= set(config):
        raise InputError(f"draft checkpoint config {cfg} lacks method / hidden_size / vocab_size / options")
    return config


def check_target(config: dict, model, weights: Path) -> None:
    mine = target_signature(model)
    if (config["hidden_size"], config["vocab_size"]) != (mine["hidden_size"], mine["vocab_size"]):
        raise InputError(
            f"draft checkpoint {weights.name} was trained for {config['model']} (hidden size {config['hidden_size']}, "
            f"vocab {config['vocab_size']}), not {model.name} (hidden size {mine['hidden_size']}, vocab "
            f"{mine['vocab_size']}); train one for this model with `clm train {config['method']} --model ...`")


def load_weights(weights: Path, module: torch.nn.Module) -> None:
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for a corrupt / truncated file
        raise InputError(f"draft checkpoint {weights} cannot be read ({type(e).__name__}: corrupt or truncated)") from None
    own = module.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise InputError(f"draft checkpoint {weights} does not match the {type(module).__name__} it should fill "
                         "(different options or a different method)")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def shipped(method: str, model_name: str) -> Path:
    """The checkpoint shipped with clmkit for `method` on embedded model `model_name`."""
    return CHECKPOINT_DIR / f"{method}-{model_name}.safetensors"


def save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda p: torch.save(state, p))
