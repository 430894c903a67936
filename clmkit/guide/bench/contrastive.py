"""Contrastive search (Su et al., 2022, SimCTG), the baseline momentum decoding is compared against.

transformers 5.x moved `generate(penalty_alpha=...)` to a Hub repository (custom_generate), which an
offline machine cannot fetch, so this is the paper's rule written out, on HF's own cache API:

    x_t = argmax_{v in top-k}  (1 - alpha) p(v | x_<t) - alpha * max_j cos(h_v, h_j)

with h_v the last hidden state of candidate v (one batched forward of the k candidates over a cache
repeated k times) and h_j those of the context (prompt + generated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache


@torch.inference_mode()
def contrastive_search(module, prompt: list[int], max_new_tokens: int, alpha: float = 0.6, k: int = 5,
                       eos: set[int] = frozenset()) -> list[int]:
    cache = DynamicCache(config=module.config)
    out = module(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True, output_hidden_states=True)
    context = out.hidden_states[-1][0]  # [n, d]
    logits = out.logits[0, -1]
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        probs = logits.float().softmax(-1)
        top = probs.topk(k)
        cache.batch_repeat_interleave(k)
        cand = module(input_ids=top.indices[:, None], past_key_values=cache, use_cache=True, output_hidden_states=True)
        h = cand.hidden_states[-1][:, -1]  # [k, d]
        degeneration = (F.normalize(h, dim=-1) @ F.normalize(context, dim=-1).T).max(-1).values
        best = int(((1 - alpha) * top.values - alpha * degeneration).argmax())
        cache.batch_select_indices(torch.tensor([best]))
        token = int(top.indices[best])
        tokens.append(token)
        if token in eos:
            break
        context = torch.cat([context, h[best : best + 1]])
        logits = cand.logits[best, -1]
    return tokens
