"""The feature cache: the frozen target's final hidden states of every training token, on disk.

Every trained drafter reads the target's last hidden state (after the final norm, so that
`lm_head(h)` is the target's logits). The target is frozen, so its forward over the training data is
run once and kept as memory-mapped float16 arrays; every method then trains from the same cache
without touching the target again (Medusa/EAGLE recompute it every epoch; on 2 CPU cores the
target's forward would cost more than the drafter's training).

Layout of a cache folder (written to FOLDER.tmp, renamed when complete: a crash leaves no half cache):
    meta.json    model, hidden_size, vocab_size, sequences [[offset, prompt_len, length], ...], eval ids
    tokens.i32   int32 [N]        every sequence's tokens, concatenated
    hidden.f16   float16 [N, d]   the target's final hidden state at each token
    hidden.lL.f16  float16 [N, d] (optional) the input of decoder layer L at each token, added on
                 demand by `use_layer` for drafters that read an intermediate layer (hidden-transfer)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from clmkit.errors import InputError
from clmkit.files import atomic_write
from clmkit.train.data import read_distill_data


@dataclass
class Batch:
    """B windows of L consecutive tokens of the training sequences.

    tokens [B, L] long, hidden [B, L, d] float32 (the target's feature of each token), response [B, L]
    bool (the token belongs to the target's response: only those are prediction labels), and
    valid [B, L] bool (not padding); mid [B, L, d] the input of the cache's chosen layer (`use_layer`)."""

    tokens: torch.Tensor
    hidden: torch.Tensor
    response: torch.Tensor
    valid: torch.Tensor
    mid: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        return Batch(*(None if t is None else t.to(device)
                       for t in (self.tokens, self.hidden, self.response, self.valid, self.mid)))

    def labels(self, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels [B, L], mask [B, L]): the token `offset` positions after each position, and whether
        that is a response token inside the window (the loss and accuracy mask)."""
        labels = torch.zeros_like(self.tokens)
        mask = torch.zeros_like(self.response)
        if offset < self.tokens.shape[1]:
            labels[:, :-offset] = self.tokens[:, offset:]
            mask[:, :-offset] = self.response[:, offset:] & self.valid[:, offset:]
        return labels, mask & self.valid


@torch.inference_mode()
def target_hidden(module, ids: list[int], layer: int = -1) -> torch.Tensor:
    """The target's final hidden states [n, d] for a token sequence (one forward, no KV cache), or
    hidden_states[layer] in HF order (the input of decoder layer `layer`), computed by the first
    `layer` layers only (the rest would be discarded)."""
    if layer == -1:
        out = module(input_ids=torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1, use_cache=False)
        return out.hidden_states[-1][0].float()
    from clmkit.drafters._draft_lm import _decoder_layers, layer_view

    captured = []
    last = _decoder_layers(module)[1][layer - 1]
    handle = last.register_forward_hook(lambda m, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        layer_view(module, 0, layer)(input_ids=torch.tensor([ids]), logits_to_keep=1, use_cache=False)
    finally:
        handle.remove()
    return captured[0][0].float()


def build_feature_cache(model, data_path: Path, folder: Path, eval_fraction: float = 0.05, max_length: int = 512,
                        seed: int = 0) -> Path:
    """Run the frozen target over every (prompt + response) in `data_path` and store its features."""
    rows = read_distill_data(data_path)
    if not rows:
        raise InputError(f"{data_path} holds no sequences")
    seqs = [(r["prompt"] + r["response"])[:max_length] for r in rows]
    prompt_lens = [min(len(r["prompt"]), max_length) for r in rows]
    total = sum(len(s) for s in seqs)
    d = model.module.config.get_text_config(decoder=True).hidden_size
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokens = np.memmap(tmp / "tokens.i32", dtype=np.int32, mode="w+", shape=(total,))
    hidden = np.memmap(tmp / "hidden.f16", dtype=np.float16, mode="w+", shape=(total, d))
    index, offset = [], 0
    with Progress() as progress:
        task = progress.add_task("target features", total=total)
        for seq, plen in zip(seqs, prompt_lens):
            tokens[offset:offset + len(seq)] = seq
            hidden[offset:offset + len(seq)] = target_hidden(model.module, seq).numpy().astype(np.float16)
            index.append([offset, plen, len(seq)])
            offset += len(seq)
            progress.advance(task, len(seq))
    tokens.flush()
    hidden.flush()
    order = np.random.default_rng(seed).permutation(len(index))
    n_eval = max(1, int(len(index) * eval_fraction))
    meta = {"model": model.name, "hidden_size": d, "vocab_size": model.vocab_size, "tokens": total,
            "sequences": index, "eval": sorted(int(i) for i in order[:n_eval]), "data": str(data_path)}
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


class FeatureCache:
    """Read side of a feature cache: seeded random training windows, fixed evaluation windows."""

    def __init__(self, folder: Path):
        meta_path = Path(folder) / "meta.json"
        if not meta_path.exists():
            raise InputError(f"no feature cache at {folder} (make one with `clm train data`)")
        self.folder = Path(folder)
        self.meta = json.loads(meta_path.read_text())
        n, d = self.meta["tokens"], self.meta["hidden_size"]
        self.tokens = np.memmap(self.folder / "tokens.i32", dtype=np.int32, mode="r", shape=(n,))
        self.hidden = np.memmap(self.folder / "hidden.f16", dtype=np.float16, mode="r", shape=(n, d))
        eval_ids = set(self.meta["eval"])
        seqs = self.meta["sequences"]
        self.train_seqs = [s for i, s in enumerate(seqs) if i not in eval_ids]
        self.eval_seqs = [s for i, s in enumerate(seqs) if i in eval_ids]
        self.train_tokens = sum(s[2] - s[1] for s in self.train_seqs)  # response tokens: the labels
        self.mid = None  # memmap of the layer chosen by use_layer, carried by every batch as Batch.mid

    def use_layer(self, model, layer: int) -> None:
        """Batches also carry the input of decoder layer `layer` (HF hidden_states[layer]). Computed once
        from the cached tokens when the cache lacks it (older caches stay valid), written atomically."""
        n, d = self.meta["tokens"], self.hidden_size
        path = self.folder / f"hidden.l{layer}.f16"
        if layer not in self.meta.get("layers", []):
            self.check_model(model)
            tmp = path.with_name(path.name + ".tmp")
            states = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(n, d))
            with Progress() as progress:
                task = progress.add_task(f"target layer {layer} features", total=n)
                for offset, _, length in self.meta["sequences"]:
                    ids = self.tokens[offset:offset + length].tolist()
                    states[offset:offset + length] = target_hidden(model.module, ids, layer).numpy().astype(np.float16)
                    progress.advance(task, length)
            states.flush()
            del states
            tmp.rename(path)
            self.meta["layers"] = sorted(self.meta.get("layers", []) + [layer])
            atomic_write(self.folder / "meta.json", lambda p: p.write_text(json.dumps(self.meta)))
        self.mid = np.memmap(path, dtype=np.float16, mode="r", shape=(n, d))

    @property
    def hidden_size(self) -> int:
        return self.meta["hidden_size"]

    def check_model(self, model) -> None:
        d = model.module.config.get_text_config(decoder=True).hidden_size
        if (d, model.vocab_size) != (self.hidden_size, self.meta["vocab_size"]):
            raise InputError(f"the feature cache {self.folder} was made with {self.meta['model']} (hidden size "
                             f"{self.hidden_size}, vocab {self.meta['vocab_size']}), not {model.name} (hidden size {d}, "
                             f"vocab {model.vocab_size}); rebuild it with `clm train data --model {model.name}`")

    def window(self, seq, start: int, length: int):
        offset, plen, n = seq
        end = min(n, start + length)
        idx = slice(offset + start, offset + end)
        positions = np.arange(start, end)
        return self.tokens[idx], self.hidden[idx], positions >= plen, None if self.mid is None else self.mid[idx]

    def collate(self, windows, length: int) -> Batch:
        b = len(windows)
        tokens = torch.zeros(b, length, dtype=torch.long)
        hidden = torch.zeros(b, length, self.hidden_size)
        response = torch.zeros(b, length, dtype=torch.bool)
        valid = torch.zeros(b, length, dtype=torch.bool)
        mid = None if self.mid is None else torch.zeros(b, length, self.hidden_size)
        for i, (t, h, r, m) in enumerate(windows):
            n = len(t)
            tokens[i, :n] = torch.from_numpy(t.astype(np.int64))
            hidden[i, :n] = torch.from_numpy(h.astype(np.float32))
            response[i, :n] = torch.from_numpy(r)
            valid[i, :n] = True
            if mid is not None:
                mid[i, :n] = torch.from_numpy(m.astype(np.float32))
        return Batch(tokens, hidden, response, valid, mid)

    def train_batch(self, batch_size: int, length: int, step: int, seed: int) -> Batch:
        """Batch number `step`: a pure function of (seed, step), so a resumed run sees the same data.
        Windows end in the response; they start up to `length` tokens earlier (context for attention)."""
        rng = np.random.default_rng([seed, step])
        windows = []
        for _ in range(batch_size):
            seq = self.train_seqs[rng.integers(len(self.train_seqs))]
            _, plen, n = seq
            end = int(rng.integers(min(plen + 1, n), n + 1))
            windows.append(self.window(seq, max(0, end - length), length))
        return self.collate(windows, length)

    def eval_batches(self, batch_size: int, length: int) -> list[Batch]:
        """The held-back sequences cut into consecutive windows covering their responses (fixed)."""
        windows = []
        for seq in self.eval_seqs:
            _, plen, n = seq
            for start in range(max(0, plen - length // 4), n - 1, length):
                windows.append(self.window(seq, start, length))
        return [self.collate(windows[i:i + batch_size], length) for i in range(0, len(windows), batch_size)]
