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


class BatchKVCache(KVCache):
    """B independent sequences on one slot axis, for batched decoding (`Batch` of the torch backend).

    Rows have their own lengths: slot s of row b is live when `valid[b, s]`; a row's prompt sits
    right-aligned before the current end (left padding), so every step appends one slot to all rows
    at the same index. Rows join (`add_row`, any time: a longer prompt shifts the others right) and
    leave (`drop_row`); slots no row uses any more are trimmed from the left.
    """

    def __init__(self, num_layers: int, capacity: int = 256):
        super().__init__(num_layers, capacity)
        self.valid = torch.zeros(0, 0, dtype=torch.bool)  # [B, T]
        self.positions = torch.zeros(0, 0, dtype=torch.long)  # [B, T]: each slot's RoPE position

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    def add_row(self, row: KVCache) -> int:
        """Append a single-sequence cache as a new row; returns its batch index."""
        n, t = row.length, self.valid.shape[1]
        shift = max(0, n - t)  # a prompt longer than the slot axis pushes every row right
        width = t + shift
        valid = torch.zeros(self.rows + 1, width, dtype=torch.bool)
        positions = torch.zeros(self.rows + 1, width, dtype=torch.long)
        valid[:-1, shift:], positions[:-1, shift:] = self.valid, self.positions
        valid[-1, width - n:] = True
        positions[-1, width - n:] = torch.arange(n)
        for mine, theirs in zip(self.layers, row.layers):
            k, v = theirs.key_buf[:, :, :n], theirs.value_buf[:, :, :n]
            cap = max(mine.capacity, width)
            keys = k.new_zeros(self.rows + 1, k.shape[1], cap, k.shape[3])
            values = v.new_zeros(self.rows + 1, v.shape[1], cap, v.shape[3])
            if mine.is_initialized:
                keys[:-1, :, shift:width] = mine.key_buf[:, :, :t]
                values[:-1, :, shift:width] = mine.value_buf[:, :, :t]
            mine.is_initialized, mine.device = True, k.device
            keys[-1:, :, width - n:width] = k
            values[-1:, :, width - n:width] = v
            mine.key_buf, mine.value_buf, mine.capacity = keys, values, cap
            mine.length = width
            mine.keys, mine.values = keys[:, :, :width], values[:, :, :width]
        self.valid, self.positions = valid, positions
        return self.rows - 1

    def drop_row(self, index: int) -> None:
        keep = torch.tensor([b for b in range(self.rows) if b != index], dtype=torch.long)
        self.valid, self.positions = self.valid[keep], self.positions[keep]
        for layer in self.layers:
            layer.key_buf, layer.value_buf = layer.key_buf[keep], layer.value_buf[keep]
            layer.keys, layer.values = layer.key_buf[:, :, : layer.length], layer.value_buf[:, :, : layer.length]
        self._trim()

    def _trim(self) -> None:
        """Drop leading slots no row uses (rows that held them have left)."""
        if self.rows == 0:
            self.valid, self.positions = self.valid[:, :0], self.positions[:, :0]
            self.crop_to(0)
            return
        used = self.valid.any(0).nonzero()
        first = int(used[0]) if used.numel() else self.valid.shape[1]
        if first == 0:
            return
        self.valid, self.positions = self.valid[:, first:], self.positions[:, first:]
        for layer in self.layers:
            n = layer.length - first
            layer.key_buf[:, :, :n] = layer.key_buf[:, :, first:layer.length].clone()
            layer.value_buf[:, :, :n] = layer.value_buf[:, :, first:layer.length].clone()
            layer.length = n
            layer.keys, layer.values = layer.key_buf[:, :, :n], layer.value_buf[:, :, :n]

    def append_slot(self, stepping: torch.Tensor) -> torch.Tensor:
        """Book one new slot for every row (live for the rows in `stepping` [B] bool); returns the
        new tokens' positions [B]. The forward that follows writes the slot's keys and values."""
        lengths = self.valid.sum(1)
        self.valid = torch.cat([self.valid, stepping[:, None]], 1)
        self.positions = torch.cat([self.positions, lengths[:, None]], 1)
        return lengths
