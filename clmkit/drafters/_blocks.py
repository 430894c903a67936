"""Small transformer pieces for trained drafters: RMSNorm, RoPE and one pre-norm decoder block whose
attention takes explicit past keys/values and an explicit mask.

Explicit keys and mask because the same block runs in three shapes: causal over a training window,
over a committed window plus the ancestors of a draft-tree node (inference), and over teacher keys
plus a chain of its own predictions (evaluation of deeper positions). A single layer's keys and
values depend only on its own input, so keys of committed positions can be reused freely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) of x [..., n, heads, hd] at positions [..., n]."""
    hd = x.shape[-1]
    freqs = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    angles = positions[..., None].float() * freqs  # [..., n, hd/2]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[..., None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[..., None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class DraftBlock(nn.Module):
    """x + Attn(norm(x)), then + SwiGLU(norm(.)); Llama's layer, sized for a draft."""

    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * mlp, bias=False)
        self.down = nn.Linear(mlp, d, bias=False)

    def keys(self, x: torch.Tensor, positions: torch.Tensor):
        """(q, k, v) [..., n, heads, hd] of inputs x [..., n, d] at positions [..., n] (RoPE applied)."""
        q, k, v = self.qkv(self.attn_norm(x)).unflatten(-1, (3, self.heads, self.hd)).unbind(-3)
        return rope(q, positions), rope(k, positions), v

    def forward(self, x, positions, mask, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x [B, n, d]; mask [B or 1, n, past + n] bool (True = may attend); past keys/values [B, m, heads, hd].
        Returns (output [B, n, d], (k, v) of these n inputs)."""
        q, k, v = self.keys(x, positions)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 1), torch.cat([past[1], v], 1))
        att = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=mask[:, None])
        h = x + self.out(att.transpose(1, 2).flatten(-2))
        gate, up = self.gate_up(self.mlp_norm(h)).chunk(2, -1)
        return h + self.down(F.silu(gate) * up), (k, v)


def causal_window_mask(n: int, window: int, device=None) -> torch.Tensor:
    """[1, n, n] bool: position i sees j when i - window < j <= i (the draft's sliding window)."""
    i = torch.arange(n, device=device)
    return ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window))[None]
