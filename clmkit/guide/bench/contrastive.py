"""Contrastive search (Su et al., 2022, SimCTG), the baseline momentum decoding is compared against.

transformers 5.x moved `generate(penalty_alpha=...)` to a Hub repository (custom_generate), which an
offline machine cannot fetch, so this is the paper's rule written out, on HF's own cache API:

    x_t = argmax_{v in top-k}  (1 - alpha) p(v | x_<t) - alpha * max_j cos(h_v, h_j)

with h_v the last hidden state of candidate v (one batched forward of the k candidates over a cache
repeated k times) and h_j those of the context (prompt + generated).

Several prompts run as one batch (left-padded, each row with its own positions and attention mask):
B prompts x k candidates are one forward per step. Padding only adds masked slots, so every row
follows the rule exactly as it would alone, up to kernel rounding (tests/guide/test_bench_rows.py).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def contrastive_search(module, prompt: list[int], max_new_tokens: int, alpha: float = 0.6, k: int = 5,
                       eos: set[int] = frozenset()) -> list[int]:
    return contrastive_search_batch(module, [prompt], max_new_tokens, alpha, k, eos)[0]


@torch.inference_mode()
def contrastive_search_batch(module, prompts: list[list[int]], max_new_tokens: int, alpha: float = 0.6, k: int = 5,
                             eos: set[int] = frozenset()) -> list[list[int]]:
    """Each prompt's contrastive-search output (ending with its EOS when one was chosen)."""
    b, width = len(prompts), max(len(p) for p in prompts)
    rows = torch.arange(b)
    ids = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)  # 1 = a real token (prompts are right-aligned)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=module.config)
    # transformers 5.x renamed `past_key_values` to `cache` (the old name still works, with a warning).
    cache_kw = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
    out = module(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, output_hidden_states=True,
                 **{cache_kw: cache})
    context = F.normalize(out.hidden_states[-1].float(), dim=-1)  # [b, n, d]
    real = mask.bool()  # which context slots are text (padding never counts as a repetition)
    logits = out.logits[:, -1]
    position = mask.sum(-1)  # [b]: the next token's position
    tokens: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(b, dtype=torch.bool)
    for _ in range(max_new_tokens):
        top = logits.float().softmax(-1).topk(k)  # [b, k]
        cache.batch_repeat_interleave(k)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype)], -1)
        cand = module(input_ids=top.indices.reshape(b * k, 1), attention_mask=mask.repeat_interleave(k, 0),
                      position_ids=position.repeat_interleave(k)[:, None], use_cache=True, output_hidden_states=True,
                      **{cache_kw: cache})
        h = cand.hidden_states[-1][:, -1].float().view(b, k, -1)
        similarity = torch.einsum("bkd,bnd->bkn", F.normalize(h, dim=-1), context).masked_fill(~real[:, None], float("-inf"))
        best = ((1 - alpha) * top.values - alpha * similarity.max(-1).values).argmax(-1)  # [b]
        cache.batch_select_indices(rows * k + best)
        chosen = top.indices[rows, best].tolist()
        for i, t in enumerate(chosen):
            if not done[i]:
                tokens[i].append(t)
                done[i] = t in eos
        if bool(done.all()):
            break
        context = torch.cat([context, F.normalize(h[rows, best], dim=-1)[:, None]], 1)
        real = torch.cat([real, torch.ones(b, 1, dtype=torch.bool)], -1)
        logits = cand.logits[:, -1].view(b, k, -1)[rows, best]
        position = position + 1
    return tokens
