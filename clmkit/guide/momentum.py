"""Momentum Decoding (Lan et al., 2022, "Momentum Decoding: Open-ended Text Generation As Graph Exploration").

Generation walks a directed graph whose nodes are the tokens of the text so far and whose edges are
the n-grams already written. Choosing a token that closes a circuit - an n-gram already on the path -
is penalised, and the penalty grows with how deep into the loop the step goes (the momentum): the
length L of the longest repeated n-gram (n <= max_ngram) that the candidate would complete. The
resistance R(L) turns that length into a penalty; greedy over the penalised scores among the top-k:

    x_t = argmax_{v in top-k(p)}  p(v | x_<t) - alpha * R(L(v)),   L(v) = 0 if v is not in the graph.

Defaults follow the authors' released code (models/utlis_ngram.py, GPT-2 XL setting): k = 5,
alpha = 0.2, max_ngram = 5, R(L) = L (R = infinity past the table). The graph includes the prompt.
Being a pure function of the path, it is re-scored per tree node, so drafters stay token-identical.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from clmkit.errors import InputError
from clmkit.guide import register

DEFAULT_RESISTANCE = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)  # R(L) for L = 0..5


@register("momentum")
class Momentum:
    name = "momentum"
    reweights = True
    greedy_only = True

    def __init__(self, model, alpha: float = 0.2, k: int = 5, max_ngram: int = 5,
                 resistance: tuple[float, ...] | list[float] = DEFAULT_RESISTANCE):
        if not alpha >= 0 or k < 1 or max_ngram < 1 or not resistance:
            raise InputError("momentum: need alpha >= 0, k >= 1, max_ngram >= 1 and a resistance table")
        self.alpha, self.k, self.max_ngram = alpha, k, max_ngram
        self.resistance = [float(r) for r in resistance]
        self.eos_ids = frozenset(model.eos_token_ids)
        self.eos = min(self.eos_ids) if self.eos_ids else 0
        self.tokens: list[int] = []
        self.ngrams = Counter()  # every n-gram (n = 1..max_ngram) of the path, as tuples

    def begin(self, prompt_ids: list[int], sampling=None) -> None:
        self.tokens, self.ngrams = [], Counter()
        self.advance(list(prompt_ids))

    def _ending_at_end(self):
        end = len(self.tokens)
        return (tuple(self.tokens[end - n : end]) for n in range(1, min(self.max_ngram, end) + 1))

    def advance(self, tokens: list[int]) -> None:
        for t in tokens:
            self.tokens.append(t)
            self.ngrams.update(self._ending_at_end())

    def rollback(self, n: int) -> None:
        for _ in range(n):
            self.ngrams.subtract(self._ending_at_end())
            self.tokens.pop()

    def repetition_length(self, token: int) -> int:
        """L: the longest n such that (last n-1 tokens + token) is already on the path; 0 if token is new."""
        if self.ngrams[(token,)] <= 0:
            return 0
        for n in range(min(self.max_ngram, len(self.tokens) + 1), 1, -1):
            if self.ngrams[tuple(self.tokens[len(self.tokens) - n + 1 :]) + (token,)] > 0:
                return n
        return 1

    def penalty(self, length: int) -> float:
        """alpha * R(L); past the table the step is blocked (alpha = 0 turns the method off)."""
        if length < len(self.resistance):
            return self.alpha * self.resistance[length]
        return math.inf if self.alpha > 0 else 0.0

    def allowed(self):
        return None

    def reweight(self, logits: torch.Tensor, node: int) -> torch.Tensor:
        probs = torch.softmax(logits.float(), -1)
        top = torch.topk(probs, min(self.k, probs.numel()))
        scores = torch.full_like(probs, float("-inf"))
        for p, v in zip(top.values.tolist(), top.indices.tolist()):
            scores[v] = p - self.penalty(self.repetition_length(v))
        if bool(torch.isinf(scores).all()):  # every candidate blocked: fall back to the most likely one
            scores[top.indices[0]] = 0.0
        return scores

    @property
    def finished(self) -> bool:
        return False

    @property
    def complete(self) -> bool:
        return True
