"""`hidden-transfer`: parallel decoding via hidden transfer (Wu et al., 2024).

At an intermediate layer t of the target, the hidden state of the context is *transferred* into
pseudo hidden states of the next K tokens by trained linear maps; the pseudo states then run through
the target's own (frozen) layers t..L-1, where self-attention lets them read the whole sequence and
each other, and the target's final norm and LM head turn them into guesses for K future tokens at
once. Only the transfer maps are trained:

    p_j = h_a + |h_a| (A_j h_a/|h_a| + B_j e(x_{a+1})/|e| + c_j)      j = 0..K-1, at position a+1+j
    logits_j = lm_head(norm(layers_t..L-1(p_j | states of x_<=a at layer t, p_<j)))  -> x_{a+2+j}

h_a = the input of layer t at the last token the target has processed (a = n-2 when the context has n
tokens: the last one, x_{n-1}, is the root of the next tree and has not been through the target yet),
|x| = RMS(x). A, B, c start at zero: every pseudo state starts as a copy of h_a. The B_j term is ours,
not the paper's: its pseudo states are built inside the verify forward where x_{a+1}'s own state
exists; ours run in a separate forward one token behind, so they are told the root token instead.

The separate forward (the paper runs the pseudo states inside the target's verify forward): the
drafter keeps its own KV cache of layers t..L-1 for the committed tokens, fed with the layer-t states
the engine's hidden-states hook returns (`hidden_layer = t`), and each step runs (newly committed
rows + K pseudo rows) through those layers, then drops the pseudo rows. The tree is Medusa's (heads.py)
with pseudo state j filling depth j+1. Docs: docs/drafters/hidden-transfer.md.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from clmkit.cache import KVCache
from clmkit.drafters import register
from clmkit.drafters._draft_lm import _decoder_layers, layer_view, positive_int
from clmkit.drafters.heads import DECAY, TOPK, HeadsDrafter
from clmkit.errors import InputError
from clmkit.hf_adapter import num_layers


def default_layer(total: int) -> int:
    """Transfer at 4/5 of the depth (layer 24 of SmolLM2's 30): the pseudo states still get a fifth of
    the network to assimilate the context, and drafting costs a fifth of a forward over a few rows
    (training backpropagates through those layers: on 2 CPU cores that cost decided it)."""
    return max(1, min(total - 1, round(4 * total / 5)))


class UpperLayers:
    """The target's decoder layers [t, L), final norm included, run on given layer-t input states.

    A view of the target shares its weights (`layer_view`); its forward embeds dummy token ids, and a
    pre-hook on layer t swaps in the given states (so positions, masks and caches are HF's own, for
    any architecture `layer_view` supports). Not an nn.Module attribute of the draft: the target's
    weights are never trained nor saved with the draft."""

    def __init__(self, target: nn.Module, layer: int):
        path, layers = _decoder_layers(target)
        decoder = path.rsplit(".", 1)[0]  # the module that owns the layer stack: LlamaModel, GPT2Model, ...
        self.view = layer_view(target, layer, len(layers)).get_submodule(decoder)  # no LM head: the draft's own
        self.first = layers[layer]  # the same object as the view's first layer
        params = inspect.signature(self.view.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.dtype = next(target.parameters()).dtype

    def __call__(self, states: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 cache: KVCache | None = None) -> torch.Tensor:
        """states [B, n, d] at positions [B, n]; mask [B, 1, n, past + n] bool (True = may attend).
        Returns the final hidden states [B, n, d] (after the final norm: lm_head of them = logits)."""
        handle = self.first.register_forward_pre_hook(lambda module, args: (states.to(self.dtype),) + args[1:])
        additive = torch.zeros(mask.shape, dtype=self.dtype).masked_fill_(~mask, torch.finfo(self.dtype).min)
        try:
            out = self.view(input_ids=torch.zeros(positions.shape, dtype=torch.long, device=states.device),
                            position_ids=positions, attention_mask=additive.to(states.device),
                            use_cache=cache is not None, **{self.cache_kw: cache})
        finally:
            handle.remove()
        return out.last_hidden_state.float()


class HiddenTransfer(nn.Module):
    method = "hidden-transfer"

    def __init__(self, parts, layer: int | None = None, positions: int = 3, anchors: int = 16):
        super().__init__()
        if parts.module is None:
            raise InputError("hidden-transfer needs the whole target model (its upper layers)")
        self.parts = parts
        total = num_layers(parts.module)
        if total < 2:
            raise InputError("hidden-transfer needs a target with at least 2 decoder layers (one above the transfer)")
        self.feature_layer = default_layer(total) if layer is None else positive_int(layer, "layer")
        if self.feature_layer >= total:
            raise InputError(f"hidden-transfer: layer must be in 1..{total - 1} (the target has {total} layers), "
                             f"got {self.feature_layer}")
        self.depth = positive_int(positions, "positions")
        self.anchors = positive_int(anchors, "anchors")
        self.options = {"layer": self.feature_layer, "positions": self.depth, "anchors": self.anchors}
        d = parts.lm_head.shape[1]
        self.transfer = nn.Parameter(torch.zeros(self.depth, d, d))  # A_j
        self.token = nn.Parameter(torch.zeros(self.depth, d, d))  # B_j
        self.bias = nn.Parameter(torch.zeros(self.depth, d))  # c_j
        for p in parts.module.parameters():  # frozen target: gradients flow through it, never into it
            p.requires_grad_(False)
        self.upper = UpperLayers(parts.module, self.feature_layer)

    def pseudo(self, h: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
        """Pseudo layer-t states [..., K, d] from the last processed state h [..., d] and the next
        token ids root [...]: p_j = h + |h| (A_j h/|h| + B_j e/|e| + c_j), |x| = RMS(x).
        The residual stream at layer t is ~500x larger than a token embedding (SmolLM2: RMS ~60 vs
        ~0.13) and varies by token: in RMS units both inputs and the update are O(1), so one
        learning rate fits A, B and c."""
        e = self.parts.embed[root]
        scale = h.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6
        unit_e = e / (e.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
        update = (torch.einsum("...d,kjd->...kj", h / scale, self.transfer)
                  + torch.einsum("...d,kjd->...kj", unit_e, self.token) + self.bias)
        return h[..., None, :] + scale[..., None, :] * update

    def teacher(self, batch, anchors: torch.Tensor) -> torch.Tensor:
        """Final states [B, S, K, d] of the pseudo rows built at each anchor position a. The window's L
        real layer-t rows go first (causal, no gradient: they do not depend on the transfer), into a
        cache; then the S x K pseudo rows, pseudo row (a, j) at position a + 1 + j seeing real rows <= a
        and pseudo rows (a, <= j): what the drafter's forward sees at inference, for every anchor at once."""
        h = batch.mid
        b, n, _ = h.shape
        s, k = anchors.numel(), self.depth
        i, j = torch.arange(n, device=h.device), torch.arange(k, device=h.device)
        cache = KVCache(num_layers(self.parts.module), n + s * k)
        with torch.no_grad():
            self.upper(h, i.expand(b, -1), (i[None, :] <= i[:, None])[None, None].expand(b, -1, -1, -1), cache)
        pseudo = self.pseudo(h[:, anchors], batch.tokens[:, anchors + 1]).flatten(1, 2)  # [B, S*K, d]
        row_anchor, row_j = anchors.repeat_interleave(k), j.repeat(s)
        sees_real = i[None, :] <= row_anchor[:, None]
        sees_pseudo = (row_anchor[:, None] == row_anchor[None, :]) & (row_j[None, :] <= row_j[:, None])
        mask = torch.cat([sees_real, sees_pseudo], 1)[None, None].expand(b, -1, -1, -1)
        out = self.upper(pseudo, (row_anchor + 1 + row_j).expand(b, -1), mask, cache)
        return out.unflatten(1, (s, k))

    def loss(self, batch):
        """Medusa-style sum_j DECAY^j * CE(pseudo row j, x_{a+2+j}) over S evenly spaced anchors."""
        n = batch.tokens.shape[1]
        anchors = torch.linspace(0, n - 2, min(self.anchors, n - 1), device=batch.tokens.device).round().long().unique()
        out = self.teacher(batch, anchors)
        total, logs = out.sum() * 0, {}
        for j in range(self.depth):
            labels, mask = batch.labels(2 + j)
            labels, mask = labels[:, anchors], mask[:, anchors]
            if not mask.any():
                continue
            ce = F.cross_entropy(self.parts.logits(out[:, :, j][mask]), labels[mask])
            total = total + DECAY ** j * ce
            logs[f"ce{j + 1}"] = float(ce.detach())
        return total, logs

    def position_logits(self, batch):
        """Every position of the window as an anchor (the last has no next token: zero logits)."""
        n = batch.tokens.shape[1]
        out = self.teacher(batch, torch.arange(n - 1, device=batch.tokens.device))
        for j in range(self.depth):
            yield j + 1, F.pad(self.parts.logits(out[:, :, j]), (0, 0, 0, 1))


@register("hidden-transfer")
class HiddenTransferDrafter(HeadsDrafter):
    """Medusa's tree and drafting loop (heads.py); the candidates come from the pseudo states."""

    name = "hidden-transfer"
    module_class = HiddenTransfer

    def __init__(self, model, checkpoint=None, budget=None, **options):
        super().__init__(model, checkpoint, budget, **options)
        self.hidden_layer = self.module.feature_layer  # the engine's hook hands over this layer's input

    def begin(self, prompt_ids, sampling=None) -> None:
        super().begin(prompt_ids, sampling)
        self.cache = KVCache(num_layers(self.model.module), 256)  # layers t..L-1 of committed tokens
        self.fed = 0  # committed positions whose rows are in self.cache
        self.slots = 0  # their slot count (the first rows may be cut off: KEEP_FEATURES)

    def candidates(self, context: list[int], features: torch.Tensor) -> torch.Tensor:
        """[K, TOPK]: pseudo state j's best guesses for depth j + 1."""
        return self.pseudo_logits(context, features).topk(TOPK, -1).indices

    def pseudo_logits(self, context: list[int], features: torch.Tensor) -> torch.Tensor:
        """[K, vocab]: feed the committed rows the upper layers have not seen, plus the K pseudo rows."""
        m, k, n = self.module, self.module.depth, len(context)
        new = min(n - 1 - self.fed, features.shape[0])  # committed rows not yet through the upper layers
        pseudo = m.pseudo(features[-1], torch.tensor(context[-1]))  # [K, d]
        states = torch.cat([features[features.shape[0] - new:], pseudo])[None]
        positions = torch.cat([torch.arange(n - 1 - new, n - 1), torch.arange(n - 1, n - 1 + k)])[None]
        rows = new + k
        mask = torch.ones(1, 1, rows, self.slots + rows, dtype=torch.bool)
        mask[0, 0, :, self.slots:] = torch.ones(rows, rows, dtype=torch.bool).tril()  # causal among the new rows
        out = m.upper(states, positions, mask, self.cache)[0, -k:]
        self.slots += new
        self.fed = n - 1
        self.cache.crop_to(self.slots)  # drop the pseudo rows: the cache again holds committed rows only
        return m.parts.logits(out)
