"""Log-probabilities of the tokens a sequence commits, for `logprobs` / `top_logprobs`.

The engine streams tokens, not logits, and with a drafter the logits of a step belong to tree
nodes, so the server scores committed tokens itself: a teacher-forced forward over each chunk's
tokens on its own KV cache. Row i of that forward is the distribution token i+1 was drawn from, so
the numbers are the model's (raw, before temperature/top-p, as OpenAI and vLLM report them) for
exactly the text returned. It costs one extra forward per step, paid only by requests that ask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.tree import TokenTree


@dataclass
class TokenScore:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens at this position, most likely first


class Scorer:
    """Feeds a sequence's committed tokens through its own backend sequence (torch or llama.cpp)."""

    def __init__(self, engine, prompt_ids: list[int], k: int, capacity: int):
        self.k = k
        self.seq = engine.backend.sequence(capacity)
        with torch.inference_mode():
            self.next_logits = self.seq.prefill(list(prompt_ids))  # predicts the first new token

    @torch.inference_mode()
    def score(self, token_ids: list[int], last: bool = False) -> list[TokenScore]:
        """Scores of the next tokens; `last`: no tokens follow, skip the forward that would predict them."""
        if not token_ids:
            return []
        rows = [self.next_logits[None]]
        if len(token_ids) > 1 or not last:
            # A chain is a tree with one path: one forward, row i predicts token i + 1.
            logits = self.seq.tree(TokenTree.chain(token_ids[0], token_ids[1:]))
            self.seq.keep(list(range(len(token_ids))))
            rows.append(logits[: len(token_ids) - 1])
            self.next_logits = logits[-1]
        logp = torch.cat(rows).float().log_softmax(-1)
        chosen = logp.gather(1, torch.tensor(token_ids)[:, None])[:, 0]
        top = logp.topk(self.k, dim=-1) if self.k else None
        return [
            TokenScore(t, float(chosen[i]),
                       list(zip(top.indices[i].tolist(), top.values[i].tolist())) if top is not None else [])
            for i, t in enumerate(token_ids)
        ]

    def close(self) -> None:
        self.seq.close()
