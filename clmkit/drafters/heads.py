"""`heads`: Medusa draft heads (Cai et al., 2024), the field's baseline for trained drafting.

K small heads read the target's last hidden state h_t (after the final norm) of the last committed
token t; head k predicts the token k+1 positions ahead (the target's own LM head predicts t+1, which
the verify step yields as its bonus token):

    logits_k = lm_head(h_t + SiLU(W_k h_t))        W_k zero-initialised: head k starts as the LM head

The tree is Medusa's: node (depth d, rank r) holds head d's rank-r candidate, the shape the one that
maximises the expected accepted length for the node budget given the per-head rank accuracies
measured on held-back data at training time (stored in the checkpoint). One matrix-vector product
per head per step: drafting costs almost nothing. Trained by `clm train heads` on self-distilled
data with Medusa-1's loss: sum_k 0.8^k * CE(head k, token t+k+1). Docs: docs/drafters/heads.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clmkit.drafters import register
from clmkit.drafters._draft_lm import positive_int
from clmkit.drafters._trained import TrainedDrafter, depth_template, fill_by_depth
from clmkit.tree import TokenTree

DECAY = 0.8  # Medusa-1's weight of head k's loss: DECAY ** k
TOPK = 10  # candidates per head


class ResBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, d)
        nn.init.zeros_(self.linear.weight)  # start as the identity: the head begins as the target's LM head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    method = "heads"

    def __init__(self, parts, heads: int = 3, layers: int = 1):
        super().__init__()
        self.parts = parts
        self.depth = positive_int(heads, "heads")
        self.options = {"heads": self.depth, "layers": positive_int(layers, "layers")}
        d = parts.lm_head.shape[1]
        self.heads = nn.ModuleList(nn.Sequential(*[ResBlock(d) for _ in range(layers)]) for _ in range(self.depth))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [K, ..., vocab] of every head for hidden states h [..., d]."""
        return torch.stack([self.parts.logits(head(h)) for head in self.heads])

    def position_logits(self, batch):
        for k, head in enumerate(self.heads, start=1):
            yield k, self.parts.logits(head(batch.hidden))

    def loss(self, batch):
        return residual_heads_loss(self.heads, self.parts, batch.hidden, batch)


def residual_heads_loss(heads, parts, z: torch.Tensor, batch):
    """Medusa-1's loss: sum_k DECAY^k * CE(head k on z_t, the token k+1 after t), over the response
    positions among the first z.shape[1] of the batch (Chimera's heads use it too)."""
    total, logs = 0.0, {}
    n = z.shape[1]
    for k, head in enumerate(heads, start=1):
        labels, mask = batch.labels(k + 1)
        labels, mask = labels[:, :n], mask[:, :n]
        if not mask.any():
            continue
        ce = F.cross_entropy(parts.logits(head(z[mask])), labels[mask])
        total = total + DECAY ** k * ce
        logs[f"ce{k}"] = float(ce.detach())
    return total, logs


@register("heads")
class HeadsDrafter(TrainedDrafter):
    name = "heads"
    module_class = MedusaHeads
    default_budget = 12

    def __init__(self, model, checkpoint=None, budget=None, **options):
        super().__init__(model, checkpoint, budget, **options)
        self.template = depth_template([p[:TOPK] for p in self.rank_probs], self.budget)

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        features = self.committed_features(context)
        if len(context) + self.template.depth > self.model.context_length:
            return TokenTree.root(context[-1])
        return fill_by_depth(self.template, context[-1], self.candidates(context, features))

    def candidates(self, context: list[int], features: torch.Tensor) -> torch.Tensor:
        """[K, TOPK]: head k's best guesses for depth k, from the feature that predicted context[-1]."""
        return self.module(features[-1]).topk(TOPK, -1).indices
