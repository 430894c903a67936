"""The one place that knows transformers-version details: forward kwargs, cache and mask plumbing."""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

from clmkit.cache import KVCache
from clmkit.tree import TokenTree, tree_attention_mask


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

    def __call__(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache,
        attention_mask: torch.Tensor | dict | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits [n, vocab] for the n input tokens (only the last one's with `last_only`)."""
        out = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **{self.cache_kw: cache},
        )
        return out.logits[0]

    def tree_mask(self, tree: TokenTree, prefix_length: int) -> torch.Tensor | dict:
        full = tree_attention_mask(tree, prefix_length, self.dtype)
        if self.sliding_window is None:
            return full
        # Hybrid models (Gemma 3, some Qwen2) take one mask per layer type.
        sliding = tree_attention_mask(tree, prefix_length, self.dtype, self.sliding_window)
        return {"full_attention": full, "sliding_attention": sliding}

    def tree(self, tree: TokenTree, cache: KVCache) -> torch.Tensor:
        """One forward over a whole tree: logits [n, vocab], node i's logits predict its children."""
        prefix = cache.length
        ids = tree.tokens[None]
        positions = (prefix + tree.depth)[None]
        # A chain (plain decoding is a chain of one) is ordinary causal attention: let HF build it.
        mask = None if tree.is_chain else self.tree_mask(tree, prefix)
        return self(ids, positions, cache, mask)
