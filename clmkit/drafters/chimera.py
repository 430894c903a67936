"""`chimera`: Chimera, a lightweight draft model over the target's states (Zeng et al., 2024).

Medusa's heads see only the last hidden state; Chimera feeds its heads two summaries instead:

  trigram encoder        the embeddings of the last three tokens (x_{t-1}, x_t, x_{t+1}), concatenated
                         and projected: short-range context, *including* x_{t+1}, the token the
                         target just emitted, which has no hidden state yet
  full-context encoder   one transformer layer over the target's last-layer states f_{<=t} (a sliding
                         window of them): long-range context
  residual heads         head k reads z = enc(f)_t + tri_t, computes z + SiLU(W_k z), and the target's
                         LM head turns that into a guess for token t+1+k

so the draft tree is rooted at x_{t+1} (the last committed token), head k filling depth k, in the
Medusa tree shape built from the per-head rank accuracies measured at training time.
Docs: docs/drafters/chimera.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clmkit.drafters import register
from clmkit.drafters._blocks import DraftBlock, causal_window_mask
from clmkit.drafters._draft_lm import positive_int
from clmkit.drafters.heads import TOPK, HeadsDrafter, ResBlock, residual_heads_loss


class ChimeraDraft(nn.Module):
    method = "chimera"

    def __init__(self, parts, heads: int = 3, block_heads: int = 8, mlp: int = 768, window: int = 32):
        super().__init__()
        self.parts = parts
        d = parts.lm_head.shape[1]
        self.depth = positive_int(heads, "heads")
        self.window = positive_int(window, "window")
        self.options = {"heads": self.depth, "block_heads": positive_int(block_heads, "block_heads"),
                        "mlp": positive_int(mlp, "mlp"), "window": self.window}
        self.trigram = nn.Linear(3 * d, d)
        self.context = DraftBlock(d, block_heads, mlp)
        self.heads = nn.ModuleList(ResBlock(d) for _ in range(self.depth))

    def summary(self, features: torch.Tensor, trigrams: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """z [B, n, d] from features [B, n, d] and token trigrams [B, n, 3] (ending at the next token)."""
        tri = self.trigram(self.parts.embed[trigrams].flatten(-2))
        ctx, _ = self.context(features, positions, causal_window_mask(features.shape[1], self.window, features.device))
        return ctx + tri

    def batch_summary(self, batch) -> torch.Tensor:
        """z for positions 0..L-2 (each needs its next token for the trigram)."""
        tokens = batch.tokens
        prev = F.pad(tokens, (1, 0))[:, :-1]  # x_{t-1} (0 before the window start)
        trigrams = torch.stack([prev[:, :-1], tokens[:, :-1], tokens[:, 1:]], -1)
        positions = torch.arange(tokens.shape[1] - 1, device=tokens.device).expand(tokens.shape[0], -1)
        return self.summary(batch.hidden[:, :-1], trigrams, positions)

    def position_logits(self, batch):
        z = self.batch_summary(batch)
        for k, head in enumerate(self.heads, start=1):
            yield k, F.pad(self.parts.logits(head(z)), (0, 0, 0, 1))

    def loss(self, batch):
        return residual_heads_loss(self.heads, self.parts, self.batch_summary(batch), batch)


@register("chimera")
class ChimeraDrafter(HeadsDrafter):
    """Medusa's tree and drafting loop (heads.py); only the heads' input differs."""

    name = "chimera"
    module_class = ChimeraDraft

    def candidates(self, context: list[int], features: torch.Tensor) -> torch.Tensor:
        m = self.module
        w = min(m.window, features.shape[0])
        n = len(context)
        padded = [0, 0] + list(context)  # trigram of position t: (x_{t-1}, x_t, x_{t+1})
        trigrams = torch.tensor([padded[t + 1: t + 4] for t in range(n - 1 - w, n - 1)])
        z = m.summary(features[-w:][None], trigrams[None], torch.arange(n - 1 - w, n - 1)[None])[0, -1]
        return torch.stack([m.parts.logits(head(z)) for head in m.heads]).topk(TOPK, -1).indices
