"""`fspad`: Feature Sampling and Partial Alignment Distillation (Gui et al., 2024) on an EAGLE-2 draft.

EAGLE's idea: drafting is easier at the *feature* level. A one-layer draft transformer reads, at each
position t, the target's feature f_t (last hidden state, after the final norm) and the embedding of
the token x_{t+1} that followed, and predicts the next feature f_{t+1}; the target's own LM head turns
a predicted feature into next-token logits. Drafting is autoregressive over features, so a tree of
depth D costs D small draft forwards. FSPAD adds two things (our reading of the paper, at this scale):

  feature sampling   the feature alone is uncertain about which token the target emitted; FSPAD
                     "samples" it with the token embedding. The draft input is
                         fc([e(x_{t+1}), f_t, f_t * e(x_{t+1})])
                     the element-wise product being the token-selected part of the feature.
  partial alignment  the predicted feature g_t is aligned with f_{t+1} (smooth-L1, as EAGLE), but the
  distillation       logits come from g_t + A g_t (A a zero-initialised linear map): the logit loss
                     (cross-entropy on the target's own next token) can move the logits without
                     pulling g_t away from the feature it must match for the next draft step.

Tree: EAGLE-2's dynamic tree. From the root, each depth expands the `width` best nodes (by draft
path log-probability) with their top-`width` tokens; after `depth` levels the `budget` best nodes
overall (an ancestor-closed set, since a path's score only falls) form the tree. The draft attends
over the last `window` committed positions plus the node's own ancestors. Docs: docs/drafters/fspad.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clmkit.drafters import register
from clmkit.drafters._blocks import DraftBlock, causal_window_mask
from clmkit.drafters._draft_lm import positive_int
from clmkit.drafters._trained import TrainedDrafter
from clmkit.tree import TokenTree

FEATURE_WEIGHT, LOGIT_WEIGHT = 1.0, 0.1  # EAGLE's loss weights (regression, classification)
EVAL_DEPTH = 3  # positions evaluated by rolling the draft on its own features


class FeatureDraft(nn.Module):
    method = "fspad"

    def __init__(self, parts, heads: int = 8, mlp: int = 768, window: int = 32, noise: float = 0.1):
        super().__init__()
        self.parts = parts
        d = parts.lm_head.shape[1]
        heads = positive_int(heads, "heads")
        if d % heads:
            raise ValueError(f"hidden size {d} is not divisible by {heads} heads")
        self.window = positive_int(window, "window")
        self.noise = float(noise)
        self.options = {"heads": heads, "mlp": positive_int(mlp, "mlp"), "window": self.window, "noise": self.noise}
        self.depth = EVAL_DEPTH
        self.fc = nn.Linear(3 * d, d)
        self.block = DraftBlock(d, heads, mlp)
        self.align = nn.Linear(d, d, bias=False)  # partial alignment: logits read g + A g
        nn.init.zeros_(self.align.weight)

    def inputs(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Feature sampling: fc([e(x), f, f * e(x)]) for features f [..., d] and next tokens x [...]."""
        e = self.parts.embed[tokens]
        return self.fc(torch.cat([e, features, features * e], -1))

    def logits(self, g: torch.Tensor) -> torch.Tensor:
        return self.parts.logits(g + self.align(g))

    def teacher(self, batch):
        """One teacher-forced pass: g[:, t] predicts f_{t+1} from (f_t, x_{t+1}); also returns keys."""
        b, n = batch.tokens.shape
        f = batch.hidden[:, :-1]
        if self.training and self.noise:
            f = f + self.noise * (torch.rand_like(f) * 2 - 1)  # EAGLE's uniform feature noise
        x = self.inputs(f, batch.tokens[:, 1:])
        positions = torch.arange(n - 1, device=x.device).expand(b, -1)
        g, kv = self.block(x, positions, causal_window_mask(n - 1, self.window, x.device))
        return g, kv

    def loss(self, batch):
        g, _ = self.teacher(batch)
        target = batch.hidden[:, 1:]
        fmask = batch.valid[:, 1:]
        feature = F.smooth_l1_loss(g[fmask], target[fmask])
        labels, mask = batch.labels(2)
        mask = mask[:, :-1]
        ce = F.cross_entropy(self.logits(g[mask]), labels[:, :-1][mask]) if mask.any() else g.sum() * 0
        return FEATURE_WEIGHT * feature + LOGIT_WEIGHT * ce, {"feature": float(feature.detach()), "ce": float(ce.detach())}

    def position_logits(self, batch):
        """Position 1 from teacher features; position p > 1 feeds the draft its own predicted feature
        and the true token (accuracy given the earlier positions were right, as a tree path sees it)."""
        g, (k, v) = self.teacher(batch)
        n = g.shape[1]
        pad = batch.tokens.new_zeros(batch.tokens.shape[0], 1)
        # g covers positions 0..L-2 (pairs need a next token); the last position has no label anyway.
        yield 1, F.pad(self.logits(g), (0, 0, 0, 1))
        teacher_mask = causal_window_mask(n, self.window, g.device)  # [1, n, n]
        eye = torch.eye(n, dtype=torch.bool, device=g.device)[None]
        past_k, past_v, masks = k, v, [teacher_mask]
        for p in range(2, self.depth + 1):
            tokens = torch.cat([batch.tokens[:, p:], pad.expand(-1, p - 1)], 1)[:, :n]  # x_{t+p}
            positions = torch.arange(p - 1, n + p - 1, device=g.device).expand(g.shape[0], -1)
            mask = torch.cat(masks[:1] + [eye] * (p - 1), -1)  # teacher window, then own chain at t
            g, (k2, v2) = self.block(self.inputs(g, tokens), positions, mask, (past_k, past_v))
            past_k, past_v = torch.cat([past_k, k2], 1), torch.cat([past_v, v2], 1)
            yield p, F.pad(self.logits(g), (0, 0, 0, 1))


@register("fspad")
class FSPADDrafter(TrainedDrafter):
    name = "fspad"
    module_class = FeatureDraft
    default_budget = 12

    def __init__(self, model, checkpoint=None, budget=None, width: int = 4, depth: int = 5, **options):
        super().__init__(model, checkpoint, budget, **options)
        self.width = positive_int(width, "width")
        self.max_depth = positive_int(depth, "depth")

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        feats = self.committed_features(context)
        m = self.module
        # a tree of budget - 1 draft tokens is never deeper than that: no draft forward past it
        depth = min(self.max_depth, self.budget - 1, self.model.context_length - len(context))
        if depth < 1:
            return TokenTree.root(context[-1])
        # The committed window: pairs (f_t, x_{t+1}) for the last `window` positions t <= n-2.
        w = min(m.window, feats.shape[0])
        n = len(context)
        positions = torch.arange(n - 1 - w, n - 1)
        x = m.inputs(feats[-w:], torch.tensor(context[n - w:]))[None]
        g, (keys, values) = m.block(x, positions[None], causal_window_mask(w, m.window))
        root_g = g[0, -1]
        # Tree growth (EAGLE-2): node lists; node 0 is the root.
        tokens, parents, scores, node_depth = [context[-1]], [-1], [0.0], [0]
        slots: dict[int, int] = {}  # expanded node -> its key slot after the window
        frontier, frontier_g = [0], root_g[None]
        for d in range(1, depth + 1):
            logp = F.log_softmax(m.logits(frontier_g), -1)  # [F, vocab]
            top = logp.topk(self.width, -1)
            new = []
            for i, parent in enumerate(frontier):
                for lp, tok in zip(top.values[i].tolist(), top.indices[i].tolist()):
                    tokens.append(tok)
                    parents.append(parent)
                    scores.append(scores[parent] + lp)
                    node_depth.append(d)
                    new.append(len(tokens) - 1)
            if d == depth:
                break
            frontier = sorted(new, key=lambda j: -scores[j])[: self.width]
            # One draft forward over the new frontier: each attends to the window and its expanded ancestors.
            parent_g = torch.stack([root_g if parents[j] == 0 else expanded_g[slots[parents[j]]] for j in frontier]) \
                if d > 1 else root_g.expand(len(frontier), -1)
            x = m.inputs(parent_g, torch.tensor([tokens[j] for j in frontier]))[None]
            mask = torch.zeros(1, len(frontier), w + len(slots) + len(frontier), dtype=torch.bool)
            mask[..., :w] = True
            for row, j in enumerate(frontier):
                a = parents[j]
                while a > 0:
                    mask[0, row, w + slots[a]] = True
                    a = parents[a]
                mask[0, row, w + len(slots) + row] = True
            pos = torch.tensor([[n - 2 + d] * len(frontier)])
            out, (k2, v2) = m.block(x, pos, mask, (keys, values))
            keys, values = torch.cat([keys, k2], 1), torch.cat([values, v2], 1)
            for row, j in enumerate(frontier):
                slots[j] = len(slots)
            expanded_g = out[0] if d == 1 else torch.cat([expanded_g, out[0]])
            frontier_g = out[0]
        keep = sorted(range(1, len(tokens)), key=lambda j: (-scores[j], node_depth[j]))[: self.budget - 1]
        order = [0] + sorted(keep, key=lambda j: (node_depth[j], j))  # parents before children
        index = {j: i for i, j in enumerate(order)}
        return TokenTree(torch.tensor([tokens[j] for j in order]),
                         torch.tensor([-1] + [index[parents[j]] for j in order[1:]]))
