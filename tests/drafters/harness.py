"""Shared checks every drafter must pass: greedy parity with plain decoding, lossless sampling."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from clmkit.engine import Engine
from clmkit.drafters._draft_lm import self_draft_module
from clmkit.hf_adapter import Forward, new_cache, num_layers
from clmkit.models import Model
from clmkit.parity import first_divergence
from clmkit.sampling import Sampling, target_probs
from clmkit.verify import Verdict, verify
from tests.stats import ALPHA, chisquare_pvalue


def assert_greedy_parity(model, drafter, prompt: list[int], max_new_tokens: int = 40) -> None:
    """Token-identical to plain greedy decoding, except reported near-ties (top-2 gap < 1e-4)."""
    plain = Engine(model).complete(prompt, max_new_tokens=max_new_tokens).token_ids
    fast = Engine(model, drafter=drafter).complete(prompt, max_new_tokens=max_new_tokens)
    d = first_divergence(model.module, prompt, plain, fast.token_ids)
    if d is not None:
        print(f"[parity] {getattr(drafter, 'name', drafter)} on {model.name}: {d}")
        assert d.near_tie, str(d)
    return fast


def step_samples(model, drafter, context: list[int], sampling: Sampling, trials: int, seed: int = 0):
    """Run `trials` decode steps from the same context, as the engine runs them, and collect what each
    step commits. Returns (first-token counts, {t1: counts of the token after t1})."""
    fwd = Forward(model.module)
    cache = new_cache(model.module, len(context) + drafter.max_nodes + 8)
    generator = torch.Generator().manual_seed(seed)
    vocab = model.vocab_size
    first = torch.zeros(vocab)
    after: dict[int, torch.Tensor] = {}
    drafter.begin(context[:-1], sampling)
    hidden = getattr(drafter, "needs_hidden", False)  # trained drafters read the target's hidden states
    layer = getattr(drafter, "hidden_layer", -1)  # which layer's (HF order): the final one unless it says
    with torch.inference_mode():
        fwd(torch.tensor([context[:-1]]), torch.arange(len(context) - 1)[None], cache, hidden=hidden)
        prompt_hidden = fwd.hidden_states[layer] if hidden else None
        prefix = cache.length
        for _ in range(trials):
            if hidden:  # every trial starts from the same committed features
                drafter.begin(context[:-1], sampling)
                drafter.observe_prompt(prompt_hidden)
            tree = drafter.propose(list(context))
            logits = fwd.tree(tree, cache, hidden=hidden)
            v = verify(tree, logits, sampling, generator)
            cache.crop_to(prefix)  # every trial starts from the same context
            if hidden:
                drafter.observe(tree, logits, v, hidden=fwd.hidden_states[layer])
            else:
                drafter.observe(tree, logits, v)
            first[v.tokens[0]] += 1
            if len(v.tokens) > 1:
                after.setdefault(v.tokens[0], torch.zeros(vocab))[v.tokens[1]] += 1
    return first, after


def accept_first_child(tree, logits, sampling, generator) -> Verdict:
    """A lossy 'verifier' for negative controls (swap it in for `harness.verify`): commits the first
    depth-1 draft whatever the target says, then the target's argmax after it."""
    child = tree.children[0][0]
    return Verdict([0, child], [int(tree.tokens[child]), int(logits[child].argmax())])


def assert_sampling_lossless(model, drafter, context: list[int], sampling: Sampling, trials: int = 20_000) -> None:
    """Committed tokens follow the target: t1 ~ P(.|context); t2 ~ P(.|context + t1) for the most
    frequent accepted t1. Chi-square at significance ALPHA (1e-3)."""
    first, after = step_samples(model, drafter, context, sampling, trials)
    with torch.inference_mode():
        p1 = target_probs(model.module(input_ids=torch.tensor([context])).logits[0, -1], sampling)
    assert first[p1 == 0].sum() == 0, "committed a token the target gives probability 0"
    assert chisquare_pvalue(first[p1 > 0], p1[p1 > 0]) > ALPHA
    if after:
        t1, counts = max(after.items(), key=lambda kv: kv[1].sum())
        if counts.sum() >= 500:
            with torch.inference_mode():
                p2 = target_probs(model.module(input_ids=torch.tensor([context + [t1]])).logits[0, -1], sampling)
            assert counts[p2 == 0].sum() == 0
            assert chisquare_pvalue(counts[p2 > 0], p2[p2 > 0]) > ALPHA


class PathMemo(nn.Module):
    """A HF causal LM stand-in for the 20,000-step distribution tests: same call convention and cache,
    but each node's logits come from a memo keyed by the token path the node attends to.

    It writes each token's id and position into the KVCache it is given (as 1-wide "keys" and
    "values"), so after the caller's keep/crop the cache still says which tokens a query sees; the
    path is read from the attention mask (or the causal rule without one), checked to be a contiguous
    prefix (a wrong tree mask would fail here), and its logits computed once by the real model.
    The drafters, DraftLM bookkeeping, masks and verification all run for real; only the repeated
    model arithmetic is memoised (a full model call per step would take ~10 min on this CPU).

    A call identical to an earlier one (same cache contents, tokens, positions and mask) reuses the
    paths read then: the trials all restart from one context, so most calls repeat."""

    def __init__(self, real: nn.Module):
        super().__init__()
        self.real = real
        self.config = real.config
        self.generation_config = real.generation_config
        self.memo: dict[tuple, torch.Tensor] = {}
        self.hidden_memo: dict[tuple, torch.Tensor] = {}  # final hidden state per path (trained drafters, issue 10)
        self.layer_memo: dict[tuple, torch.Tensor] = {}  # every layer's [L+1, d] per path (hidden-transfer reads one)
        self._paths: dict[tuple, list[tuple]] = {}  # call signature -> the token path of each query

    def get_output_embeddings(self):
        return self.real.get_output_embeddings()

    def get_input_embeddings(self):
        return self.real.get_input_embeddings()

    def _read_paths(self, slot_ids: torch.Tensor, slot_pos: torch.Tensor, allowed: torch.Tensor | None,
                    positions: torch.Tensor, past: int) -> list[tuple]:
        ids, pos = slot_ids.tolist(), slot_pos.tolist()
        allowed = None if allowed is None else allowed.tolist()
        keys = []
        for i, position in enumerate(positions.tolist()):
            seen = range(past + i + 1) if allowed is None else [s for s, ok in enumerate(allowed[i]) if ok]
            path = sorted((pos[s], ids[s]) for s in seen)
            assert [p for p, _ in path] == list(range(len(path))), "a node sees a broken path"
            assert path[-1][0] == position
            keys.append(tuple(t for _, t in path))
        return keys

    def _compute(self, missing: list[tuple]) -> None:
        """Logits of the missing paths, one real forward per path length."""
        by_length: dict[int, list[tuple]] = {}
        for key in missing:
            by_length.setdefault(len(key), []).append(key)
        for rows in by_length.values():
            with torch.inference_mode():
                out = self.real(input_ids=torch.tensor(rows), logits_to_keep=1, output_hidden_states=True)
            self.memo.update(zip(rows, out.logits[:, -1]))
            self.hidden_memo.update(zip(rows, out.hidden_states[-1][:, -1]))
            if len(out.hidden_states) == num_layers(self.real) + 1:  # a self:N view sharing the layers can miscount
                self.layer_memo.update(zip(rows, torch.stack(out.hidden_states, 1)[:, :, -1]))

    def forward(self, input_ids, position_ids=None, attention_mask=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        if past_key_values is None:
            return self.real(input_ids=input_ids)
        n = input_ids.shape[1]
        past = past_key_values.get_seq_length()
        # Only layer 0 is written: keep/crop leave uninitialised layers alone, and length reads layer 0.
        past_key_values.layers[0].update(input_ids.double().reshape(1, 1, n, 1), position_ids.double().reshape(1, 1, n, 1))
        slot_ids = past_key_values.layers[0].keys.reshape(-1).long()
        slot_pos = past_key_values.layers[0].values.reshape(-1).long()
        if isinstance(attention_mask, dict):
            attention_mask = attention_mask["full_attention"]
        allowed = None if attention_mask is None else attention_mask[0, 0] == 0
        positions = position_ids[0]
        signature = (past, slot_ids.numpy().tobytes(), slot_pos.numpy().tobytes(), positions.numpy().tobytes(),
                     None if allowed is None else (tuple(allowed.shape), allowed.numpy().tobytes()))
        keys = self._paths.get(signature)
        if keys is None:
            keys = self._paths[signature] = self._read_paths(slot_ids, slot_pos, allowed, positions, past)
        missing = [k for k in dict.fromkeys(keys) if k not in self.memo]
        if missing:
            self._compute(missing)
        logits = torch.stack([self.memo[k] for k in keys])[None]
        if logits_to_keep == 1:
            logits = logits[:, -1:]
        hidden = (torch.stack([self.hidden_memo[k] for k in keys])[None],)
        if all(k in self.layer_memo for k in keys):
            hidden = tuple(torch.stack([self.layer_memo[k] for k in keys], 1)[:, None])  # L+1 x [1, n, d]
        return SimpleNamespace(logits=logits, hidden_states=hidden)


def memoised_pair(model: Model) -> tuple[Model, Model]:
    """(target, its self:1 draft), both behind PathMemo: the 20,000-step distribution tests."""
    target = Model(f"memo-{model.name}", PathMemo(model.module), model.tokenizer, Path("."), False)
    draft = Model(f"memo-{model.name}-self1", PathMemo(self_draft_module(model.module, 1)), model.tokenizer,
                  Path("."), False)
    return target, draft
