"""`clm train compressor`: label prompts with the target LM, train the token classifier on them.

    train(model, out="runs/compressor", sources=["gsm8k", "summarization"], limit=120, epochs=8, seed=0)

1. labels (cached in <out>/labels.jsonl, one prompt per line, so a rerun skips them): for each
   training prompt, `word_saliency` of every word for the answer, the top `keep_fraction` = keep;
2. training: AdamW on binary cross-entropy, a held-out tenth of the prompts for validation, seeded
   (shuffling, init, dropout); after every epoch the checkpoint (model.safetensors + config.json,
   atomic), the optimizer state (state.pt) and the loss curve (losses.json, loss.png) are written,
   so `--resume` continues after the last finished epoch with the same result.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from clmkit.errors import InputError
from clmkit.files import atomic_write
from clmkit.models import Model
from clmkit.prompting.chat import user_turn
from clmkit.prompting.compress import (CompressorConfig, TokenClassifier, keep_labels, save_checkpoint, token_features,
                                       word_saliency)
from clmkit.prompting.compress_data import load_items


def _wrap(model: Model) -> tuple[str, str]:
    return user_turn(model.tokenizer) if model.chat else ("", "")


def label_rows(model: Model, sources: list[str], limit: int, keep_fraction: float, path: Path, on_row=None) -> list[dict]:
    """Token ids + per-token keep labels for up to `limit` training prompts per source (cached)."""
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line from an interrupted run
    head, tail = _wrap(model)
    rows = []
    with open(path, "a", encoding="utf-8") as f:
        for source in sources:
            for item in load_items(source, "train")[:limit]:
                if item.id in done:
                    rows.append(done[item.id])
                else:
                    if not item.answer.strip():
                        continue
                    words, saliency = word_saliency(model, head + item.before, item.text, item.after + tail, item.answer)
                    word_label = keep_labels(saliency, keep_fraction)
                    row = {"id": item.id, "token_ids": words.token_ids,
                           "labels": [float(word_label[w]) for w in words.word_of]}
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    rows.append(row)
                if on_row:
                    on_row()
    return rows


def _batch(rows: list[dict], features: dict[str, torch.Tensor]):
    t = max(len(r["token_ids"]) for r in rows)
    x = torch.zeros(len(rows), t, features[rows[0]["id"]].shape[-1])
    labels = torch.zeros(len(rows), t)
    padding = torch.ones(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r["token_ids"])
        x[i, :n] = features[r["id"]]
        labels[i, :n] = torch.tensor(r["labels"])
        padding[i, :n] = False
    return x, labels, padding


def _loss(classifier, rows, features) -> tuple[torch.Tensor, float]:
    features, labels, padding = _batch(rows, features)
    logits = classifier(features, padding)
    valid = ~padding
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid])
    accuracy = ((logits[valid] > 0).float() == labels[valid]).float().mean().item()
    return loss, accuracy


def check_options(epochs: int, batch_size: int, limit: int, keep_fraction: float, lr: float) -> None:
    if epochs < 1 or batch_size < 1 or limit < 2 or not 0 < keep_fraction < 1 or lr <= 0:
        raise InputError("need --epochs >= 1, --batch-size >= 1, --limit >= 2, 0 < --keep-fraction < 1, --lr > 0")


def train(model: Model, out: Path, sources: list[str], limit: int = 120, epochs: int = 8, batch_size: int = 8,
          lr: float = 5e-4, seed: int = 0, keep_fraction: float = 0.5, feature_layer: int = -1, resume: bool = True,
          progress=None) -> dict:
    """Label, train, checkpoint every epoch; returns the loss history."""
    check_options(epochs, batch_size, limit, keep_fraction, lr)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    label_task = progress.add_task("labels", total=limit * len(sources)) if progress else None
    rows = label_rows(model, sources, limit, keep_fraction, out / "labels.jsonl",
                      on_row=(lambda: progress.advance(label_task)) if progress else None)
    rows = sorted(rows, key=lambda r: r["id"])
    random.Random(seed).shuffle(rows)
    n_val = max(1, len(rows) // 10)
    val, train_rows = rows[:n_val], rows[n_val:]

    # the frozen LM's features, once per prompt (the LM does not change while the classifier trains)
    features = {r["id"]: token_features(model, r["token_ids"], feature_layer) for r in rows}
    embed = model.module.get_input_embeddings().weight
    config = CompressorConfig(target_model=model.name, embedding_dim=embed.shape[1], vocab_size=embed.shape[0],
                              keep_fraction=keep_fraction, seed=seed, feature_layer=feature_layer,
                              max_len=max(2048, max(len(r["token_ids"]) for r in rows)))
    torch.manual_seed(seed)
    classifier = TokenClassifier(config)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=0.01)
    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_token_accuracy": []}
    start_epoch = 0
    state_path = out / "state.pt"
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        classifier.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"]
        torch.set_rng_state(state["rng"])
    epoch_task = progress.add_task("epochs", total=epochs, completed=start_epoch) if progress else None
    for epoch in range(start_epoch, epochs):
        classifier.train()
        order = list(range(len(train_rows)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        losses = []
        for b in range(0, len(order), batch_size):
            loss, _ = _loss(classifier, [train_rows[i] for i in order[b:b + batch_size]], features)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        classifier.eval()
        with torch.no_grad():
            val_loss, val_acc = _loss(classifier, val, features)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(sum(losses) / len(losses))
        history["val_loss"].append(val_loss.item())
        history["val_token_accuracy"].append(val_acc)
        save_checkpoint(out, classifier, {"epochs_done": epoch + 1, "train_prompts": len(train_rows),
                                          "val_prompts": len(val), "sources": sources})
        state = {"model": classifier.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                 "epoch": epoch + 1, "rng": torch.get_rng_state()}
        atomic_write(state_path, lambda p: torch.save(state, p))
        (out / "losses.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
        if progress:
            progress.advance(epoch_task)
    plot_losses(history, out / "loss.png")
    return history


def plot_losses(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    ax.plot(history["epoch"], history["val_loss"], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss (keep/drop)")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
