"""Logits -> next-token distribution -> token: greedy, temperature, top-k, top-p, seeded.

`target_probs` is the distribution the sampler draws from; speculative verification uses the same
function, so accepted tokens follow exactly the distribution plain sampling would.
Order and tie rules follow HF's logits warpers: temperature, then top-k, then top-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clmkit.errors import InputError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects NaN
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else torch.seed())
        return g


def process_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Temperature, top-k, top-p applied to logits [..., vocab]; removed tokens get -inf."""
    logits = logits.float() / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one token).
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cum <= 1 - s.top_p
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def target_probs(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The distribution the next token is drawn from, per row of logits [..., vocab]."""
    if s.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return process_logits(logits, s).softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token from a 1-D distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))


def next_token(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    """One token from a 1-D logits row (plain decoding and the bonus token)."""
    if s.greedy:
        return int(logits.argmax())
    return sample(target_probs(logits, s), generator)
