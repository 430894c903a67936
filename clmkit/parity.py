"""Is a generation token-identical to a reference? If not, was the divergence a floating-point near-tie?

fp32 kernels on different shapes (a tree forward vs one token at a time) round differently, which can
flip an argmax whose top-2 logits are within rounding of each other. A divergence is excused only
when the reference's top-2 logit gap at that position is below the bound - NEAR_TIE for torch, or the
`near_tie` a clmkit Backend states for its kernels (llama.cpp: 0.5) - and it is always reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEAR_TIE = 1e-4


@dataclass
class Divergence:
    index: int  # first position where the outputs differ
    reference_token: int
    got_token: int
    top2_gap: float  # reference logits' top-1 minus top-2 at that position
    bound: float = NEAR_TIE  # the scorer's near-tie bound (a Backend's `near_tie`)

    @property
    def near_tie(self) -> bool:
        return self.top2_gap < self.bound

    def __str__(self) -> str:
        kind = "near-tie (excused)" if self.near_tie else "REAL DIVERGENCE"
        return (f"{kind}: position {self.index}: reference token {self.reference_token}, got {self.got_token}, "
                f"reference top-2 logit gap {self.top2_gap:.2e} (bound {self.bound:g})")


def first_divergence(module, prompt_ids: list[int], reference: list[int], got: list[int]) -> Divergence | None:
    """None when identical (a prefix relation counts as identical only if the lengths match too).
    `module`: the HF module, or a clmkit Backend whose logits (and stated `near_tie`) decide the near-tie."""
    if reference == got:
        return None
    bound = getattr(module, "near_tie", NEAR_TIE)
    i = next((k for k, (a, b) in enumerate(zip(reference, got)) if a != b), min(len(reference), len(got)))
    if i >= min(len(reference), len(got)):
        return Divergence(i, reference[i] if i < len(reference) else -1, got[i] if i < len(got) else -1, float("inf"), bound)
    logits = last_logits(module, prompt_ids + reference[:i])
    top2 = torch.topk(logits, 2).values
    return Divergence(i, reference[i], got[i], float(top2[0] - top2[1]), bound)


def last_logits(scorer, ids: list[int]) -> torch.Tensor:
    """Next-token logits after `ids` from a HF module or a clmkit Backend (llama.cpp has no torch module)."""
    if hasattr(scorer, "sequence"):
        seq = scorer.sequence(len(ids) + 1)
        try:
            return seq.prefill(ids).float()
        finally:
            seq.close()
    with torch.inference_mode():
        return scorer(input_ids=torch.tensor([ids])).logits[0, -1].float()
