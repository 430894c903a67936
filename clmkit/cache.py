"""KV cache with preallocated slots and `keep(indices)` for tree acceptance.

Each layer owns one buffer [batch, kv_heads, capacity, head_dim] for keys and one for values; slots
[0, length) are live. Appending writes into the next slots instead of `torch.cat` (no per-step
re-allocation, flat memory). After a tree verification, `keep(path, start)` moves the accepted
nodes' slots down to `start, start+1, ...` and drops the rest, so the cache again holds exactly the
committed sequence.

It subclasses transformers' `Cache` so any HF model's forward can write into it.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class SlotLayer(DynamicLayer):
    def __init__(self, capacity: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.key_buf = key_states.new_empty(b, h, self.capacity, d)
        self.value_buf = value_states.new_empty(b, value_states.shape[1], self.capacity, value_states.shape[3])
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        # Doubling keeps appends amortised O(1) when the caller under-estimated the capacity.
        capacity = max(needed, 2 * self.capacity)
        for name in ("key_buf", "value_buf"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], capacity, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            self._grow(end)
        self.key_buf[:, :, self.length : end] = key_states
        self.value_buf[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_buf[:, :, :end]
        self.values = self.value_buf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def keep(self, indices: torch.Tensor, start: int) -> None:
        if not self.is_initialized:
            return
        slots = indices + start
        n = indices.numel()
        # Gather first: destination and source ranges may overlap.
        self.key_buf[:, :, start : start + n] = self.key_buf.index_select(2, slots)
        self.value_buf[:, :, start : start + n] = self.value_buf.index_select(2, slots)
        self.length = start + n
        self.keys = self.key_buf[:, :, : self.length]
        self.values = self.value_buf[:, :, : self.length]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count: crop(-n) removes the last n tokens")
        self.length = max(0, self.length + tokens_to_remove)
        if self.is_initialized:
            self.keys = self.key_buf[:, :, : self.length]
            self.values = self.value_buf[:, :, : self.length]

    def reset(self) -> None:
        self.length = 0
        self.keys = self.values = None
        self.is_initialized = False


class KVCache(Cache):
    """All layers of one sequence. `capacity` is a hint: layers grow if it is exceeded."""

    def __init__(self, num_layers: int, capacity: int = 256):
        super().__init__(layers=[SlotLayer(capacity) for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length

    def keep(self, indices: torch.Tensor, start: int = 0) -> None:
        """Keep slots [0, start) and then slots `start + indices` (ascending), in that order; drop the rest."""
        indices = indices.to(torch.long)
        if indices.numel() and bool((indices[1:] <= indices[:-1]).any()):
            raise ValueError("keep: indices must be strictly ascending")
        n = indices.numel()
        # Fast path: the kept slots are already in place (plain decoding, or a chain accepted from its start).
        if n == 0 or int(indices[-1]) == n - 1:
            self.crop_to(start + n)
            return
        for layer in self.layers:
            layer.keep(indices, start)

    def crop_to(self, length: int) -> None:
        for layer in self.layers:
            if layer.length > length:
                layer.crop(length - layer.length)
