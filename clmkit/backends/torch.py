"""The torch backend: any HF causal LM, through clmkit's slot KV cache, optionally on faster kernels.

The HF module stays the model definition (any architecture transformers knows) and the correctness
oracle; `kernel` only swaps how its nn.Linear layers multiply (clmkit/backends/kernels.py):

    hf           the module as loaded (torch's default CPU GEMM)
    onednn       fp32 weights pre-packed once for oneDNN: same arithmetic up to rounding, flatter cost in n
    onednn-bf16  bf16 weights pre-packed for oneDNN (AMX / AVX512-BF16 CPUs): faster, NOT the same numbers;
                 compare it with HF in bf16, never with fp32
    auto         both fp32 kernels, each call dispatched by its number of rows to the one a ~1.5 s
                 load-time micro-benchmark found faster at that size on this CPU (`backend.kernel` says
                 which, e.g. "auto: hf at 1-3 rows, onednn at 4+ rows"; `backend.dispatch.times` the times)
"""

from __future__ import annotations

import torch

from clmkit.backends import register
from clmkit.backends.kernels import with_kernel
from clmkit.cache import BatchKVCache, KVCache
from clmkit.parity import NEAR_TIE
from clmkit.hf_adapter import Forward, batch_mask, new_cache, num_layers
from clmkit.tree import EmbeddingNodes, TokenTree


class TorchSequence:
    def __init__(self, forward: Forward, cache: KVCache):
        self.forward, self.cache = forward, cache
        self.hidden_states: tuple[torch.Tensor, ...] | None = None  # per layer [n, d], last forward with hidden=True
        self.extra_logits: torch.Tensor | None = None  # [m, vocab] of the last tree's embedding nodes (extra=)
        self._prefix = 0

    @property
    def length(self) -> int:
        return self.cache.length

    @torch.inference_mode()
    def prefill(self, ids: list[int], hidden: bool = False) -> torch.Tensor:
        start = self.cache.length
        positions = torch.arange(start, start + len(ids))[None]
        logits = self.forward(torch.tensor([ids]), positions, self.cache, last_only=not hidden, hidden=hidden)
        self.hidden_states = self.forward.hidden_states
        return logits[-1]

    @torch.inference_mode()
    def tree(self, tree: TokenTree, hidden: bool = False, extra: EmbeddingNodes | None = None) -> torch.Tensor:
        self._prefix = self.cache.length
        logits = self.forward.tree(tree, self.cache, hidden=hidden, extra=extra)
        self.hidden_states = self.forward.hidden_states
        if extra is not None:  # embedding nodes sit after the tree's slots: keep() drops them
            n = len(tree)
            self.extra_logits = logits[n:]
            logits = logits[:n]
            if hidden:
                self.hidden_states = tuple(h[:n] for h in self.hidden_states)
        return logits

    def keep(self, path: list[int]) -> None:
        self.cache.keep(torch.tensor(path), start=self._prefix)

    def truncate(self, length: int) -> None:
        self.cache.crop_to(length)

    def close(self) -> None:
        self.cache.crop_to(0)


class TorchBatch:
    """Rows on one slot axis (BatchKVCache): left-padded prompts, per-row positions and masks."""

    def __init__(self, forward: Forward, layers: int, capacity: int):
        self.forward, self.layers, self.capacity = forward, layers, capacity
        self.cache = BatchKVCache(layers, capacity)
        self.rows: list[int] = []  # batch index -> row handle
        self._next = 0

    @torch.inference_mode()
    def add(self, ids: list[int]) -> tuple[int, torch.Tensor]:
        single = KVCache(self.layers, len(ids))
        # The prompt alone, exactly as an unbatched run prefills it; its keys/values then join the batch.
        logits = self.forward(torch.tensor([ids]), torch.arange(len(ids))[None], single, last_only=True)
        self.cache.add_row(single)
        handle, self._next = self._next, self._next + 1
        self.rows.append(handle)
        return handle, logits[-1]

    @torch.inference_mode()
    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        unknown = set(tokens) - set(self.rows)
        if unknown:
            raise ValueError(f"batch rows {sorted(unknown)} are not in this batch")
        stepping = torch.tensor([h in tokens for h in self.rows])
        ids = torch.tensor([[tokens.get(h, 0)] for h in self.rows])
        positions = self.cache.append_slot(stepping)
        mask = batch_mask(self.forward, self.cache.valid, self.cache.positions, positions)
        logits = self.forward.batch(ids, positions[:, None], self.cache, mask)
        return {h: logits[b, -1] for b, h in enumerate(self.rows) if h in tokens}

    def drop(self, row: int) -> None:
        index = self.rows.index(row)
        self.rows.pop(index)
        self.cache.drop_row(index)


class TorchBackend:
    name = "torch"
    near_tie = NEAR_TIE  # greedy divergences are excused only below this top-2 logit gap
    max_leaves = None
    max_rows = None

    def __init__(self, module: torch.nn.Module, kernel: str = "hf"):
        self.oracle = module  # the HF module as loaded: fallback and correctness reference
        self.kernel_option = kernel  # what was asked for (auto, hf, ...); `kernel` says what it became
        self.module, self.kernel, self.dispatch = with_kernel(module, kernel)
        self.forward = Forward(self.module)

    def sequence(self, capacity: int) -> TorchSequence:
        return TorchSequence(self.forward, new_cache(self.module, capacity))

    def batch(self, capacity: int) -> TorchBatch:
        return TorchBatch(self.forward, num_layers(self.module), capacity)


@register("torch")
def make(module: torch.nn.Module, **options) -> TorchBackend:
    return TorchBackend(module, **options)
