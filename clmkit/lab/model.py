"""One small GPT for the objectives lab (nanoGPT-like): RoPE (or learned / no positions), pre-norm, a
per-layer attention-mask policy, an optional top-k MoE feed-forward and optional encoder–decoder wiring.

Every experiment builds its variants from this one definition, so a comparison changes exactly the
knob the paper is about (mask, objective, embeddings, experts, encoder, positions) and nothing
else. Another token mixer (e.g. linear attention) plugs in by replacing `block.attn` with a module of
the same `forward(x, mask, rope, memory=None)` signature.

Attention policies (one per layer, or one for all):
  causal         position t sees positions <= t
  prefix         position t sees the whole prefix [0, prefix_len) and positions <= t (prefix-LM)
  bidirectional  every position sees every (non-padding) position
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

POLICIES = ("causal", "prefix", "bidirectional")


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    # a policy name for every layer, or a list with one policy per layer
    attention: str | list[str] = "causal"
    n_experts: int = 0          # 0: dense FFN; else a top-k routed mixture of this many experts
    top_k: int = 2
    n_encoder_layer: int = 0    # > 0: an encoder (bidirectional over `src`) + cross-attention in every decoder layer
    position: str = "rope"      # "rope", "learned" (absolute, GPT-2) or "none" (NoPE: causal masks still order tokens)
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    extra: dict = field(default_factory=dict)  # experiment-specific settings kept with the checkpoint

    def __post_init__(self):
        policies = self.layer_policies()
        bad = [p for p in policies if p not in POLICIES]
        if bad or len(policies) != self.n_layer:
            raise ValueError(f"attention must be one of {POLICIES} or a list of {self.n_layer} of them, got {self.attention!r}")
        if self.position not in ("rope", "learned", "none"):
            raise ValueError(f"position must be rope, learned or none, got {self.position!r}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError("n_embd / n_head must be an even integer (RoPE rotates pairs)")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in 1..n_experts, got {self.top_k} of {self.n_experts}")

    def layer_policies(self) -> list[str]:
        return [self.attention] * self.n_layer if isinstance(self.attention, str) else list(self.attention)

    def to_dict(self) -> dict:
        return asdict(self)


def attention_mask(policy: str, T: int, prefix_len: torch.Tensor | None = None, key_pad: torch.Tensor | None = None,
                   device=None) -> torch.Tensor:
    """Boolean (B or 1, 1, T, T) mask, True = may attend. `prefix_len` (B,) is needed for "prefix";
    `key_pad` (B, T) marks padding keys that nobody may attend to (bidirectional layers would otherwise
    read them)."""
    pos = torch.arange(T, device=device)
    allowed = (pos[None, :] <= pos[:, None])[None]                       # (1, T, T) causal
    if policy == "bidirectional":
        allowed = torch.ones_like(allowed)
    elif policy == "prefix":
        if prefix_len is None:
            raise ValueError("the prefix policy needs prefix_len")
        in_prefix = pos[None, :] < prefix_len.to(pos.device)[:, None]    # (B, T): key is in the prefix
        allowed = allowed | in_prefix[:, None, :]
    if key_pad is not None:
        allowed = allowed & ~key_pad[:, None, :]
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=allowed.device)  # a padded row still sees itself (no NaN)
    return allowed[:, None]


def rope_tables(T: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(T, device=device).float(), inv_freq)   # (T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by position; pairs are (even, odd) features."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: GPTConfig, cross: bool = False):
        super().__init__()
        self.n_head, self.cross = c.n_head, cross
        self.q = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.kv = nn.Linear(c.n_embd, 2 * c.n_embd, bias=False)
        self.proj = nn.Linear(c.n_embd, c.n_embd, bias=False)

    def forward(self, x, mask, rope=None, memory=None):
        B, T, C = x.shape
        source = x if memory is None else memory
        q = self.q(x).view(B, T, self.n_head, -1).transpose(1, 2)
        k, v = self.kv(source).view(B, source.shape[1], 2, self.n_head, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:  # self-attention only: cross-attention has no shared positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.up = nn.Linear(c.n_embd, c.mlp_ratio * c.n_embd, bias=False)
        self.down = nn.Linear(c.mlp_ratio * c.n_embd, c.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class MoE(nn.Module):
    """Top-k routed experts (Switch/Mixtral style). Each token goes to exactly k experts and its output
    is their outputs weighted by the renormalised router probabilities. `aux_loss` is the Switch
    load-balancing loss (n_experts * sum_e fraction_e * mean_prob_e), 1.0 when perfectly balanced."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.top_k = c.top_k
        self.router = nn.Linear(c.n_embd, c.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(c) for _ in range(c.n_experts))
        self.aux_loss = torch.zeros(())
        self.last_counts = torch.zeros(c.n_experts, dtype=torch.long)  # tokens per expert, last forward

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C) tokens -> expert ids (N, k), combine weights (N, k) summing to 1, router probs (N, E)."""
        probs = self.router(x).softmax(-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        return experts, weights / weights.sum(-1, keepdim=True), probs

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        experts, weights, probs = self.route(x)
        out = torch.zeros_like(x)
        counts = torch.zeros(len(self.experts), dtype=torch.long)
        for e, expert in enumerate(self.experts):
            token, slot = (experts == e).nonzero(as_tuple=True)
            counts[e] = token.numel()
            if token.numel():
                out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        fraction = counts.to(probs) / (x.shape[0] * self.top_k)
        self.aux_loss = len(self.experts) * (fraction * probs.mean(0)).sum()
        self.last_counts = counts
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, c: GPTConfig, policy: str = "causal", cross: bool = False):
        super().__init__()
        self.policy = policy
        self.ln1 = nn.LayerNorm(c.n_embd)
        self.attn = Attention(c)
        self.ln_cross = nn.LayerNorm(c.n_embd) if cross else None
        self.cross = Attention(c, cross=True) if cross else None
        self.ln2 = nn.LayerNorm(c.n_embd)
        self.ffn = MoE(c) if c.n_experts else MLP(c)

    def forward(self, x, masks, rope, memory=None, memory_mask=None):
        x = x + self.attn(self.ln1(x), masks[self.policy], rope)
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), memory_mask, memory=memory)
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    """forward(idx, embedding=None, prefix_len=None, pad=None, src=None, src_pad=None, memory=None) -> logits (B, T, V).

    `embedding` (B, V, C): a per-sequence embedding matrix replacing the learned one at the input and
    (tied) at the output — the lexinvariant model. `src` (B, S): encoder input (encoder–decoder only)."""

    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd) if c.position == "learned" else None
        self.encoder = nn.ModuleList(Block(c, "bidirectional") for _ in range(c.n_encoder_layer))
        self.ln_enc = nn.LayerNorm(c.n_embd) if c.n_encoder_layer else None
        cross = c.n_encoder_layer > 0
        self.blocks = nn.ModuleList(Block(c, p, cross=cross) for p in c.layer_policies())
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * (c.n_layer + c.n_encoder_layer)))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE load-balancing losses of the last forward (0 for a dense model)."""
        losses = [b.ffn.aux_loss for b in (*self.encoder, *self.blocks) if isinstance(b.ffn, MoE)]
        return sum(losses) if losses else torch.zeros(())

    def embed(self, idx, embedding=None):
        if embedding is None:
            return self.wte(idx)
        return torch.gather(embedding, 1, idx[..., None].expand(-1, -1, embedding.shape[-1]))

    def positions(self, x: torch.Tensor):
        """Add learned absolute positions to x, or return the RoPE tables (None for NoPE / learned)."""
        T = x.shape[1]
        if self.wpe is not None:
            return x + self.wpe(torch.arange(T, device=x.device)), None
        if self.config.position == "none":
            return x, None
        return x, rope_tables(T, self.config.n_embd // self.config.n_head, self.config.rope_base, x.device)

    def encode(self, src, src_pad=None):
        S = src.shape[1]
        masks = {"bidirectional": attention_mask("bidirectional", S, key_pad=src_pad, device=src.device)}
        x, rope = self.positions(self.wte(src))
        for block in self.encoder:
            x = block(x, masks, rope)
        return self.ln_enc(x)

    def hidden(self, idx, prefix_len=None, src=None, pad=None, src_pad=None, embedding=None, memory=None):
        """Final-layer hidden states (B, T, C), after the last norm. `memory`: an encoder output from
        `encode(src)` to reuse (generation runs the encoder once)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        memory_mask = None if src_pad is None else ~src_pad[:, None, None, :]
        if self.encoder and memory is None:
            if src is None:
                raise ValueError("an encoder–decoder model needs src")
            memory = self.encode(src, src_pad)
        masks = {p: attention_mask(p, T, prefix_len, pad if p != "causal" else None, idx.device)
                 for p in set(self.config.layer_policies())}
        x, rope = self.positions(self.embed(idx, embedding))
        for block in self.blocks:
            x = block(x, masks, rope, memory, memory_mask)
        return self.ln_f(x)

    def logits(self, h, embedding=None):
        if embedding is not None:
            return h @ embedding.transpose(1, 2)
        return self.head(h) if self.head is not None else h @ self.wte.weight.T

    def forward(self, idx, embedding=None, **context):
        """`context`: prefix_len, pad, src, src_pad or memory, as `hidden` takes them."""
        return self.logits(self.hidden(idx, embedding=embedding, **context), embedding)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
