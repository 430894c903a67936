"""`ppd`: Parallel Prompt Decoding (Chen et al., 2024, *Hardware-Aware Parallel Prompt Decoding for
Memory-Efficient Acceleration of LLM Inference*).

No draft model at all: K trained *prompt tokens* (input embeddings, K x d parameters; the target stays
frozen) are appended to the target's own input, so the target itself guesses several future tokens in
the forward it runs anyway. Prompt token k, hung below the token x_t at position t+1+k and attending to
x_<=t and prompt tokens 0..k, is trained to give the target's distribution of x_{t+2+k} (knowledge
distillation, the paper's loss: sum_k 0.8^k KL(target || prompt k) / K).

Parallel decoding. The prompt tokens ride along in the verify forward: every tree node j that may end
the accepted path carries a chain of m_j <= K prompt tokens (clmkit.tree.EmbeddingNodes: they take a
tree position and attention, are never kept in the KV cache). After verification, the prompt logits of
the last accepted node are the next tree's candidates: its prompt k's top-10 fill depth k+1 (the
root of the next tree is the bonus token, which the accepted node's own logits gave).

Dynamic sparse tree. State s = how many prompt logits the accepted node had (0..K) = how deep the next
candidate tree can be. For each state the tree shape is Medusa's optimal tree for the per-depth rank
acceptance measured at training time, and prompt tokens go to the nodes most likely to end the
accepted path (the paper's greedy: drop the prompt token whose loss costs the least expected length).
The states form a Markov chain; its stationary distribution gives the expected tokens per forward.

Hardware-aware. The total forward size N (root + candidates + prompt tokens) is the one maximising
expected tokens / cost(N), with cost(N) the verify cost of an N-token forward measured on *this*
machine (clmkit/bench/verify_cost.py's measurement, cached per CPU, threads, backend, kernel and model
under $CLMKIT_CACHE/verify-cost/). `-O budget=B` fixes N = B + 1 instead. Docs: docs/drafters/ppd.md.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clmkit.drafters import register
from clmkit.drafters._draft_lm import positive_int
from clmkit.drafters._trained import TrainedDrafter, depth_template, fill_by_depth
from clmkit.errors import InputError
from clmkit.static_tree import TreeTemplate
from clmkit.tree import EmbeddingNodes, TokenTree

DECAY = 0.8  # the paper's weight of prompt token k's loss: DECAY ** k
TOPK = 10  # candidates per depth
# forward sizes measured (a superset of `bench speed --tune`'s, so both reuse one cached curve)
PLAN_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32)


# -- the trained module: K prompt embeddings ------------------------------------------------------


class PromptTokens(nn.Module):
    method = "ppd"

    def __init__(self, parts, tokens: int = 3, anchors: int = 16):
        super().__init__()
        self.parts = parts
        self.depth = positive_int(tokens, "tokens")
        self.anchors = positive_int(anchors, "anchors")  # prompt groups per training window (one forward)
        self.options = {"tokens": self.depth, "anchors": self.anchors}
        embed = parts.embed.float()
        # Start every prompt token at the average token embedding (the paper starts from the embeddings
        # of a text, "Next 2 word ..."; the draft module never sees the tokenizer).
        start = embed.mean(0) + 0.1 * embed.std(0) * torch.randn(self.depth, embed.shape[1])
        self.prompts = nn.Parameter(start)

    # The training windows are joint forwards of the frozen target: the window's tokens (causal), and
    # after them, for each anchor position t, a chain of K prompt tokens at positions t+1..t+K that see
    # x_<=t and their own chain only. One forward trains A*K predictions; the real tokens never see the
    # prompt tokens, so their part of the forward is exactly the target's.
    def joint_logits(self, tokens: torch.Tensor, valid: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Prompt logits [B, A, K, vocab] for windows tokens [B, L] and anchor positions [B, A] (-1: none)."""
        target = self.parts.module
        b, n = tokens.shape
        a, k = anchors.shape[1], self.depth
        t = anchors.clamp(min=0)
        embeds = torch.cat([self.parts.embed[tokens], self.prompts.expand(b, a, k, -1).reshape(b, a * k, -1)], 1)
        positions = torch.cat([torch.arange(n, device=tokens.device).expand(b, n),
                               (t[:, :, None] + 1 + torch.arange(k, device=tokens.device)).reshape(b, a * k)], 1)
        i = torch.arange(n, device=tokens.device)
        real = ((i[None, :] <= i[:, None]) & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=tokens.device)
        prompt_to_real = ((i <= t[:, :, None]) & valid[:, None, :]).repeat_interleave(k, 1)  # [B, A*K, L]
        chain = torch.ones(k, k, device=tokens.device).tril().bool()
        prompt_to_prompt = torch.block_diag(*[chain] * a).expand(b, -1, -1)
        allowed = torch.cat([torch.cat([real, real.new_zeros(b, n, a * k)], 2),
                             torch.cat([prompt_to_real, prompt_to_prompt], 2)], 1)
        dtype = self.prompts.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=tokens.device).masked_fill_(~allowed, torch.finfo(dtype).min)
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = target(inputs_embeds=embeds, position_ids=positions, attention_mask=mask[:, None],
                         use_cache=False, logits_to_keep=a * k)
        return out.logits.float().reshape(b, a, k, -1)

    @property
    def bf16(self) -> bool:
        """Train through the target in bf16 where this CPU multiplies bf16 natively (AMX): several times
        faster; the prompts then fit a bf16 target, which can change drafts, never the output."""
        return self.parts.head_bf16 is not None

    def teacher(self, batch, anchors: torch.Tensor, p: int) -> torch.Tensor:
        """The target's log-probabilities [B, A, vocab] of the token p+1 after each anchor (from the
        feature cache: lm_head of the hidden state at anchor + p)."""
        index = (anchors.clamp(min=0) + p).clamp(max=batch.tokens.shape[1] - 1)
        h = batch.hidden.gather(1, index[..., None].expand(-1, -1, batch.hidden.shape[-1]))
        return F.log_softmax(self.parts.logits(h), -1)

    def label_masks(self, batch, anchors: torch.Tensor) -> torch.Tensor:
        """[B, A, K]: prompt k of anchor a has a label (a response token inside the window)."""
        masks = [batch.labels(p + 1)[1] for p in range(1, self.depth + 1)]
        return torch.stack([m.gather(1, anchors.clamp(min=0)) for m in masks], -1) & (anchors >= 0)[..., None]

    def pick_anchors(self, batch, count: int | None) -> torch.Tensor:
        """[B, A] positions with at least one label: `count` random ones (seeded by the batch itself, so a
        resumed run sees the same), or all of them (count None: evaluation)."""
        usable = batch.labels(2)[1]
        g = torch.Generator().manual_seed(int(batch.tokens.sum()))
        rows = []
        for row in usable.cpu():
            pos = row.nonzero().flatten()
            if count is not None and len(pos) > count:
                pos = pos[torch.randperm(len(pos), generator=g)[:count]].sort().values
            rows.append(pos)
        width = max(1, max(len(r) for r in rows))
        out = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out.to(batch.tokens.device)

    def loss(self, batch):
        self.parts.module.requires_grad_(False)  # frozen: gradients reach the prompt embeddings only
        anchors = self.pick_anchors(batch, self.anchors)
        logits = self.joint_logits(batch.tokens, batch.valid, anchors)
        mask = self.label_masks(batch, anchors)
        total, logs = 0.0, {}
        for k in range(self.depth):
            m = mask[..., k]
            if not m.any():
                continue
            with torch.no_grad():
                teacher = self.teacher(batch, anchors, k + 1)[m]
            kl = F.kl_div(F.log_softmax(logits[:, :, k][m], -1), teacher, log_target=True, reduction="batchmean")
            total = total + DECAY ** k * kl / self.depth
            logs[f"kl{k + 1}"] = float(kl.detach())
        if not logs:
            total = self.prompts.sum() * 0
        return total, logs

    def position_logits(self, batch):
        """Position p = prompt token p-1, anchored at every position of the window (as at inference)."""
        anchors = self.pick_anchors(batch, None)
        logits = self.joint_logits(batch.tokens, batch.valid, anchors)
        b, n = batch.tokens.shape
        rows = torch.arange(b, device=anchors.device)[:, None].expand_as(anchors)[anchors >= 0]
        cols = anchors[anchors >= 0]
        for k in range(self.depth):
            full = logits.new_zeros(b, n, logits.shape[-1])
            full[rows, cols] = logits[:, :, k][anchors >= 0]
            yield k + 1, full


# -- the dynamic sparse trees and their hardware-aware size ----------------------------------------


@dataclass
class SparseTree:
    """The tree for one state: candidate shape, prompt tokens per node, and what it yields."""

    template: TreeTemplate
    prompts: list[int]  # prompt tokens hung below each node (a chain of prompts 0..m-1)
    expected: float  # expected accepted candidates
    next_state: list[float]  # probability that the next state is s (0..K)

    @property
    def size(self) -> int:
        return len(self.template) + sum(self.prompts)


@dataclass
class Plan:
    trees: list[SparseTree]  # one per state 0..K
    size: int  # the forward size N the trees were planned for
    tokens_per_step: float  # expected tokens per forward (stationary)
    speedup: float  # expected tokens/s over plain decoding, by the verify cost used
    choice: list[int]  # candidate nodes per state


def node_probs(template: TreeTemplate, rank_probs: list[list[float]]) -> tuple[list[float], list[float]]:
    """(P(node's path accepted), P(node is the last accepted node)) under per-depth rank rates."""
    reach = [1.0] * len(template)
    depth = [0] * len(template)
    for i in range(1, len(template)):
        p = template.parents[i]
        depth[i] = depth[p] + 1
        reach[i] = reach[p] * rank_probs[depth[i] - 1][template.ranks[i]]
    last = list(reach)
    for i in range(1, len(template)):
        last[template.parents[i]] -= reach[i]
    return reach, last


def allocate(last: list[float], budget: int, value: list[float]) -> list[int]:
    """Prompt tokens per node: start with K everywhere, then remove the prompt whose loss of expected
    next-step value, P(last) * (value[m] - value[m-1]), is smallest until `budget` remain (the paper's
    greedy; a node's prompts are a chain, so only its deepest one can go)."""
    k = len(value) - 1
    counts = [k] * len(last)
    excess = k * len(last) - max(0, budget)
    heap = [(last[j] * (value[k] - value[k - 1]), -j) for j in range(len(last))]
    heapq.heapify(heap)
    while excess > 0 and heap:
        _, neg = heapq.heappop(heap)
        j = -neg
        counts[j] -= 1
        excess -= 1
        if counts[j] > 0:
            heapq.heappush(heap, (last[j] * (value[counts[j]] - value[counts[j] - 1]), -j))
    return counts


@lru_cache(maxsize=65536)  # the plan search revisits the same states many times
def state_tree(rank_probs: tuple, state: int, candidates: int, prompts: int, value: tuple) -> SparseTree:
    """Tree for state s: `candidates` nodes from the first s depths' rates, `prompts` prompt tokens."""
    template = depth_template([list(r) for r in rank_probs[:state]], candidates + 1) if state and candidates \
        else TreeTemplate([-1], [-1])
    reach, last = node_probs(template, rank_probs)
    counts = allocate(last, prompts, value)
    nxt = [0.0] * len(value)
    for j, m in enumerate(counts):
        nxt[m] += max(0.0, last[j])
    return SparseTree(template, counts, sum(reach[1:]), nxt)


def stationary(trees: list[SparseTree]) -> np.ndarray:
    m = np.array([t.next_state for t in trees])
    m = m / m.sum(1, keepdims=True)
    a = np.vstack([m.T - np.eye(len(trees)), np.ones(len(trees))])
    b = np.zeros(len(trees) + 1)
    b[-1] = 1
    return np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0, None)


def evaluate_plan(trees: list[SparseTree], cost) -> tuple[float, float]:
    """(expected tokens per forward, expected tokens per unit cost) of the Markov chain of states."""
    pi = stationary(trees)
    tokens = float(sum(p * (1 + t.expected) for p, t in zip(pi, trees)))
    spent = float(sum(p * cost(t.size) for p, t in zip(pi, trees)))
    return tokens, tokens / spent


def plan_for_size(rank_probs: list[list[float]], k: int, size: int, cost, start: list[int] | None = None) -> Plan:
    """The best dynamic sparse trees with at most `size` forward tokens: coordinate search over the
    number of candidate nodes of each state (the rest of the size goes to prompt tokens), from `start`
    (candidates per state) or half the size."""
    rank_probs = tuple(tuple(r[:TOPK]) for r in rank_probs[:k])
    choice = [0] + [(size - 1) // 2] * k if start is None else [min(c, size - 1) for c in start]
    value = (1.0,) * (k + 1)

    def build(choice, value):
        return [state_tree(rank_probs, s, choice[s], size - 1 - choice[s], value) for s in range(k + 1)]

    best = None
    for _ in range(2):
        for s in range(1, k + 1):
            options = []
            for c in range(0, size):
                trial = choice[:s] + [c] + choice[s + 1:]
                trees = build(trial, value)
                # ties (a state the chain never reaches): the tree best on its own
                own = (1 + trees[s].expected) / cost(trees[s].size)
                options.append((evaluate_plan(trees, cost)[1], own, -c, trial, trees))
            score, _, _, choice, trees = max(options, key=lambda o: o[:3])
            best = (score, trees)
        value = tuple(1 + t.expected for t in best[1])  # prompts are worth the expected length they unlock
    trees = build(choice, value)
    tokens, rate = evaluate_plan(trees, cost)
    return Plan(trees, size, tokens, rate * cost(1), choice)


def best_plan(rank_probs: list[list[float]], k: int, costs: dict[int, float]) -> Plan:
    """The forward size with the highest expected tokens/s for this machine's verify costs (size 1, the
    root alone, is plain decoding: chosen when no tree pays for itself here)."""
    cost = interpolate(costs)
    sizes = sorted(set(range(1, min(16, max(costs)) + 1)) | set(costs))  # every small size, interpolated
    plans = []
    for n in sizes:  # the search is local: also start from the previous size's optimum (it still fits)
        fresh = plan_for_size(rank_probs, k, n, cost)
        grown = plan_for_size(rank_probs, k, n, cost, plans[-1].choice) if plans else fresh
        plans.append(max(fresh, grown, key=lambda p: p.speedup))
    return max(plans, key=lambda p: p.speedup)


def interpolate(costs: dict[int, float]):
    """cost(n) from measured sizes: linear in between, the last slope beyond."""
    xs = sorted(costs)
    ys = [costs[x] for x in xs]

    def cost(n: int) -> float:
        if n <= xs[0]:
            return ys[0]
        if n >= xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
            return ys[-1] + slope * (n - xs[-1])
        return float(np.interp(n, xs, ys))

    return cost


def machine_verify_cost(model, sizes=PLAN_SIZES) -> dict[int, float]:
    """Seconds of an n-token forward of `model` on this machine: `clm bench verify-cost`'s measurement
    (a few seconds), saved per CPU, threads, backend, kernel and model and reused from then on (the
    same cache `clm bench speed --tune` reads; `clm bench speed --retune` measures it again)."""
    from clmkit.bench.verify_cost import cached_costs

    return cached_costs(model, sizes)[0]


# -- the drafter ------------------------------------------------------------------------------------


@register("ppd")
class PPDDrafter(TrainedDrafter):
    name = "ppd"
    module_class = PromptTokens
    needs_hidden = False
    torch_only = True  # its prompt embeddings go into the target's forward

    def __init__(self, model, checkpoint=None, budget=None, **options):
        if model.runner().name != "torch":
            raise InputError("drafter 'ppd' appends its prompt embeddings to the target's forward: run it on the "
                             "torch backend (--backend torch)")
        super().__init__(model, checkpoint, budget if budget is not None else 1, **options)
        k = self.module.depth
        rates = self.rank_probs
        if budget is None:  # hardware-aware: the size this machine's verify cost favours
            self.verify_cost = machine_verify_cost(model)
            self.plan = best_plan(rates, k, self.verify_cost)
        else:
            self.verify_cost = None
            self.plan = plan_for_size(rates, k, positive_int(budget, "budget") + 1, lambda n: 1.0)
        self.max_nodes = self.budget = self.plan.size
        self.begin([])

    def describe(self) -> dict:
        """The plan in numbers: forward size, per state (candidates, prompt tokens), expectations."""
        return {"forward_size": self.plan.size, "expected_tokens_per_step": round(self.plan.tokens_per_step, 3),
                "expected_speedup": round(self.plan.speedup, 3),
                "states": [{"state": s, "candidates": len(t.template) - 1, "prompt_tokens": sum(t.prompts),
                            "expected_accepted": round(t.expected, 3)} for s, t in enumerate(self.plan.trees)],
                "verify_cost_ms": None if self.verify_cost is None else
                {n: round(t * 1000, 2) for n, t in sorted(self.verify_cost.items())}}

    @classmethod
    def budget_options(cls, draft_tokens: int) -> dict:
        # Not a plain node budget: ppd sizes its trees (candidates + prompt tokens) from this machine's
        # verify cost itself, so `bench speed --tune` leaves it alone; -O budget=N still fixes a size.
        raise InputError(f"drafter 'ppd' sizes its tree from this machine's measured verify cost; to fix the "
                         f"forward size anyway pass -O budget={draft_tokens}")

    def begin(self, prompt_ids, sampling=None) -> None:
        super().begin(prompt_ids, sampling)
        self.candidates: torch.Tensor | None = None  # [s, TOPK] for the next tree, from prompt logits
        self.tree, self.counts, self.rows, self.extra_logits = None, [], {}, None

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        state = 0 if self.candidates is None else self.candidates.shape[0]
        sparse = self.plan.trees[state]
        if len(context) + sparse.template.depth + self.module.depth > self.model.context_length:
            self.tree, self.counts = None, []  # no room for the prompt positions: a plain step
            return TokenTree.root(context[-1])
        tree = TokenTree.root(context[-1]) if state == 0 else fill_by_depth(sparse.template, context[-1], self.candidates)
        self.tree, self.counts = tree, sparse.prompts
        return tree

    def extra_nodes(self, tree: TokenTree) -> EmbeddingNodes | None:
        """The prompt-token chains this tree's nodes carry. A tree the engine changed (a guide pruned it)
        carries one full chain below its root only."""
        if self.tree is None:
            return None
        counts = self.counts if tree is self.tree else [self.module.depth] + [0] * (len(tree) - 1)
        n, parents, which, self.rows = len(tree), [], [], {}
        for node, m in enumerate(counts):
            for k in range(m):
                self.rows.setdefault(node, []).append(len(parents))
                parents.append(node if k == 0 else n + len(parents) - 1)
                which.append(k)
        if not parents:
            return None
        return EmbeddingNodes(self.module.prompts.detach()[torch.tensor(which)], torch.tensor(parents))

    def observe_extra(self, logits: torch.Tensor) -> None:
        self.extra_logits = logits

    def observe(self, tree, logits, verdict, hidden=None) -> None:
        rows = self.rows.get(verdict.path[-1], []) if self.extra_logits is not None else []
        self.candidates = self.extra_logits[rows].topk(TOPK, -1).indices if rows else None
        self.rows, self.extra_logits = {}, None
