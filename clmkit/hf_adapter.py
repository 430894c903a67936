"""The one place that knows transformers-version details: forward kwargs, cache and mask plumbing."""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

from clmkit.cache import KVCache
from clmkit.tree import EmbeddingNodes, TokenTree, tree_attention_mask


def text_config(model: PreTrainedModel):
    return model.config.get_text_config(decoder=True)


def num_layers(model: PreTrainedModel) -> int:
    return text_config(model).num_hidden_layers


def new_cache(model: PreTrainedModel, capacity: int) -> KVCache:
    return KVCache(num_layers(model), capacity)


class Forward:
    """Calls a HF causal LM with explicit positions, a KVCache and (for trees) a 4-D mask."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache`; accept both.
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        config = text_config(model)
        layer_types = getattr(config, "layer_types", None) or []
        self.sliding_window = getattr(config, "sliding_window", None) if "sliding_attention" in layer_types else None
        self.dtype = next(model.parameters()).dtype
        self.hidden_states: tuple[torch.Tensor, ...] | None = None

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        attention_mask: torch.Tensor | dict | None = None,
        last_only: bool = False,
        hidden: bool = False,
    ) -> torch.Tensor:
        """Logits [n, vocab] for the n input tokens (only the last one's with `last_only`).
        With `hidden`, `self.hidden_states` = every layer's output [n, d] (HF order: embeddings first)."""
        return self.batch(input_ids, position_ids, cache, attention_mask, last_only, hidden)[0]

    def batch(self, input_ids, position_ids, cache, attention_mask=None, last_only=False, hidden=False,
              inputs_embeds=None) -> torch.Tensor:
        """Logits [B, n, vocab] for a batch of rows (input_ids [B, n], or inputs_embeds [B, n, d])."""
        tokens = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        out = self.model(
            **tokens,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            output_hidden_states=hidden,
            **{self.cache_kw: cache},
        )
        self.hidden_states = tuple(h[0] for h in out.hidden_states) if hidden else None
        return out.logits

    def tree_mask(self, tree: TokenTree, prefix_length: int) -> torch.Tensor | dict:
        full = tree_attention_mask(tree, prefix_length, self.dtype)
        if self.sliding_window is None:
            return full
        # Hybrid models (Gemma 3, some Qwen2) take one mask per layer type.
        sliding = tree_attention_mask(tree, prefix_length, self.dtype, self.sliding_window)
        return {"full_attention": full, "sliding_attention": sliding}

    def tree(self, tree: TokenTree, cache: KVCache, hidden: bool = False, extra: EmbeddingNodes | None = None) -> torch.Tensor:
        """One forward over a whole tree: logits [n, vocab], node i's logits predict its children.
        With `extra` (embedding nodes hung below tree nodes), logits [n + m, vocab], extra rows last."""
        prefix = cache.length
        full = tree if extra is None else extra.attach(tree)
        positions = (prefix + full.depth)[None]
        # A chain (plain decoding is a chain of one) is ordinary causal attention: let HF build it.
        mask = None if full.is_chain else self.tree_mask(full, prefix)
        if extra is None:
            return self(tree.tokens[None], positions, cache, mask, hidden=hidden)
        embeds = torch.cat([self.model.get_input_embeddings()(tree.tokens), extra.embeds.to(self.dtype)])
        return self.batch(None, positions, cache, mask, hidden=hidden, inputs_embeds=embeds[None])[0]


def batch_mask(forward: Forward, valid: torch.Tensor, slot_positions: torch.Tensor, query_positions: torch.Tensor):
    """Additive mask [B, 1, 1, T] for one new token per row over a BatchKVCache's slots (the new slot
    included): a row sees only its own live slots (plus, on sliding layers, only the last window)."""
    full = torch.zeros(valid.shape, dtype=forward.dtype).masked_fill_(~valid, torch.finfo(forward.dtype).min)
    if forward.sliding_window is None:
        return full[:, None, None]
    near = slot_positions > query_positions[:, None] - forward.sliding_window
    sliding = torch.zeros(valid.shape, dtype=forward.dtype).masked_fill_(~(valid & near), torch.finfo(forward.dtype).min)
    return {"full_attention": full[:, None, None], "sliding_attention": sliding[:, None, None]}
