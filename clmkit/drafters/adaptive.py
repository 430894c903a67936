"""ADED (Liu, Lei, Zhang, Xu, 2024/AAAI 2025: "Adaptive Draft-Verification for Efficient Large Language
Model Decoding").

Two parts, both training-free and model-agnostic:

* An **adaptive n-gram "LLM representative"** (`NGramStore`): for every context of the last n-1 tokens
  (a tri-gram matrix for n = 3) a short list of next tokens with weights, pruned to the `keep` heaviest
  (the paper keeps the top 12). It approximates the target's next-token distribution and is updated as
  decoding goes: from the prompt, from every committed token, and (feedback loop) from the target's
  argmax at every verified tree node that was not accepted (what the target would have said after that
  draft path: a free, exact observation of the LLM). Weights decay geometrically per context on every
  update, so recent behaviour of the LLM outweighs old statistics (`decay`; 1.0 = plain counts). The store
  lives in the drafter object: it persists across requests (hot start) and can be saved and loaded.
  Lookups back off from the longest context to shorter ones when a context was never seen.

* An **MCTS draft maker**: PUCT selection (AlphaZero/MuZero rule) over the tree of continuations, the
  store's smoothed probabilities as priors, a simulation's value = the representative's probability of
  its leaf path given the node it was backed up through. Visit counts then concentrate on likely paths
  (exploitation) while the exploration bonus gives siblings of a likely token their share (diversity).
  Every visited node becomes a draft node, so the tree grows one node per simulation until the node
  budget (`max_nodes`, root included), the depth limit, or the probability floor (`min_prob`: a node
  the representative thinks is accepted less often than that is not worth its verification cost on
  this CPU) stops it. `search="best-first"` is the ablation without exploration.

The drafts are a deterministic function of the drafter's state (Draw.DETERMINISTIC), so sampling stays
lossless under recursive rejection sampling with one-hot q (clmkit/verify.py).
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from clmkit.drafters import register
from clmkit.errors import InputError
from clmkit.tree import TokenTree

FORMAT = "clmkit-adaptive-ngram"
VERSION = 1

# Root + 2 draft tokens, chosen by side-by-side tuning on a 2-core CPU (docs/benchmarks.md); raise on a GPU.
DEFAULT_MAX_NODES = 3


class NGramStore:
    """Weighted next-token lists per context of 1 .. n-1 tokens, pruned to the `keep` heaviest each."""

    def __init__(self, n: int = 3, keep: int = 12, decay: float = 0.9, alpha: float = 1.0):
        self.n, self.keep, self.decay, self.alpha = n, keep, decay, alpha
        # tables[k]: context of k tokens (a tuple) -> {next token: weight}; tables[0] unused
        self.tables: list[dict[tuple, dict[int, float]]] = [{} for _ in range(n)]
        self.updates = 0

    def __len__(self) -> int:
        return sum(len(t) for t in self.tables)

    def add(self, context, token: int, weight: float = 1.0) -> None:
        """One observation: `token` followed `context` (only its last n-1 tokens matter)."""
        self.updates += 1
        ctx = tuple(context[-(self.n - 1):])
        decay, keep = self.decay, self.keep
        for k in range(1, len(ctx) + 1):
            table = self.tables[k]
            key = ctx[-k:]
            row = table.get(key)
            if row is None:
                table[key] = {token: weight}
                continue
            if decay != 1.0:
                for t in row:
                    row[t] *= decay
            row[token] = row.get(token, 0.0) + weight
            if len(row) > keep:
                del row[min(row, key=row.__getitem__)]

    def add_sequence(self, tokens, start: int = 1) -> None:
        """Every position i >= start of `tokens` as an observation after the tokens before it."""
        h = self.n - 1
        for i in range(max(start, 1), len(tokens)):
            self.add(tokens[max(0, i - h):i], tokens[i])

    def candidates(self, key: tuple, limit: int) -> list[tuple[int, float]]:
        """Up to `limit` (token, probability) after `key`, most likely first, from the longest context
        of `key` that was seen (back-off). Probabilities are smoothed, w / (total + alpha): a context
        seen once is not certain."""
        for k in range(len(key), 0, -1):
            row = self.tables[k].get(key[len(key) - k:])
            if row:
                total = sum(row.values()) + self.alpha
                best = heapq.nlargest(limit, row.items(), key=lambda kv: kv[1])
                return [(t, w / total) for t, w in best]
        return []

    # -- persistence -------------------------------------------------------------------------------

    def to_json(self, vocab_size: int) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "n": self.n, "keep": self.keep, "decay": self.decay,
            "alpha": self.alpha, "vocab_size": vocab_size, "updates": self.updates,
            "tables": [[[list(key), [[t, round(w, 6)] for t, w in row.items()]] for key, row in table.items()]
                       for table in self.tables[1:]],
        }

    @classmethod
    def from_json(cls, data, vocab_size: int, where: str) -> "NGramStore":
        def bad(why: str) -> InputError:
            return InputError(f"adaptive state file {where} is corrupt or not an adaptive n-gram store: {why}")

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise bad(f"format is not {FORMAT!r}")
        if data.get("version") != VERSION:
            raise bad(f"unsupported version {data.get('version')!r}")
        if data.get("vocab_size") != vocab_size:
            raise InputError(f"adaptive state file {where} was built for a vocabulary of {data.get('vocab_size')} "
                             f"tokens; this model has {vocab_size}")
        try:
            n, keep = int(data["n"]), int(data["keep"])
            decay, alpha = float(data["decay"]), float(data["alpha"])
            tables = data["tables"]
            if n < 2 or keep < 1 or not 0 < decay <= 1 or alpha < 0 or len(tables) != n - 1:
                raise ValueError("bad header values")
            store = cls(n, keep, decay, alpha)
            store.updates = int(data.get("updates", 0))
            for k, entries in enumerate(tables, start=1):
                table = store.tables[k]
                for key, row in entries:
                    key = tuple(int(t) for t in key)
                    parsed = {int(t): float(w) for t, w in row}
                    if len(key) != k or not parsed or len(parsed) > keep:
                        raise ValueError(f"bad entry for a {k}-token context")
                    if any(not 0 <= t < vocab_size for t in (*key, *parsed)):
                        raise ValueError("token id outside the vocabulary")
                    if any(not (w > 0 and math.isfinite(w)) for w in parsed.values()):
                        raise ValueError("weights must be positive and finite")
                    table[key] = parsed
        except (KeyError, TypeError, ValueError) as e:
            raise bad(str(e)) from e
        return store


@register("adaptive")
class AdaptiveDrafter:
    """ADED: adaptive n-gram representative + MCTS (PUCT) draft tree. Options:

    n            n-gram order (3 = the paper's tri-gram: contexts of 2 tokens, backing off to 1)
    max_nodes    node budget of a draft tree, root included (sizes the KV cache)
    max_depth    longest draft path
    branch       candidates expanded per node (children considered by the search)
    keep         next tokens kept per context (the paper prunes its tri-gram matrix to 12)
    decay        per-update geometric decay of a context's weights (1.0 = plain frequency counts)
    alpha        smoothing mass for unseen continuations in the priors
    min_prob     drop draft nodes the representative expects to be accepted less often than this
    simulations  MCTS simulations per draft (default 4 x max_nodes)
    exploration  PUCT c1 (exploration weight)
    search       "mcts" (the paper) or "best-first" (ablation: largest path probability first)
    learn_from_target  add the target's argmax at every verified, non-accepted node to the store
    learn_from_prompt  add the prompt's n-grams at `begin`
    state        path of a saved store to start from (see save/load)
    budget       alias of max_nodes (root included)
    """

    name = "adaptive"

    def __init__(self, model, *, n: int = 3, max_nodes: int = DEFAULT_MAX_NODES, max_depth: int = 8, branch: int = 4,
                 keep: int = 12, decay: float = 0.9, alpha: float = 1.0, min_prob: float = 0.1,
                 simulations: int | None = None, exploration: float = 1.0, search: str = "mcts",
                 learn_from_target: bool = True, learn_from_prompt: bool = True,
                 state: str | Path | None = None, budget: int | None = None):
        if budget is not None:
            max_nodes = budget
        problems = []
        if not (isinstance(max_nodes, int) and max_nodes >= 1):
            problems.append(f"max_nodes must be an integer >= 1 (the root counts), got {max_nodes!r}")
        if not (isinstance(n, int) and n >= 2):
            problems.append(f"n must be an integer >= 2, got {n!r}")
        if not (isinstance(max_depth, int) and max_depth >= 1):
            problems.append(f"max_depth must be an integer >= 1, got {max_depth!r}")
        if not (isinstance(branch, int) and branch >= 1):
            problems.append(f"branch must be an integer >= 1, got {branch!r}")
        if not (isinstance(keep, int) and keep >= 1):
            problems.append(f"keep must be an integer >= 1, got {keep!r}")
        if not 0 < decay <= 1:
            problems.append(f"decay must be in (0, 1], got {decay!r}")
        if not alpha >= 0:
            problems.append(f"alpha must be >= 0, got {alpha!r}")
        if not 0 <= min_prob < 1:
            problems.append(f"min_prob must be in [0, 1), got {min_prob!r}")
        if simulations is not None and not (isinstance(simulations, int) and simulations >= 1):
            problems.append(f"simulations must be an integer >= 1, got {simulations!r}")
        if not exploration >= 0:
            problems.append(f"exploration must be >= 0, got {exploration!r}")
        if search not in ("mcts", "best-first"):
            problems.append(f"search must be 'mcts' or 'best-first', got {search!r}")
        if problems:
            raise InputError("adaptive: " + "; ".join(problems))
        self.vocab_size = model.vocab_size
        self.max_nodes, self.max_depth, self.branch = max_nodes, max_depth, branch
        self.min_prob, self.exploration, self.search = min_prob, exploration, search
        self.simulations = simulations if simulations is not None else 4 * max_nodes
        self.learn_from_target, self.learn_from_prompt = learn_from_target, learn_from_prompt
        self.store = NGramStore(n, keep, decay, alpha)
        self._tail: list[int] = []  # the last n-1 committed tokens at the last propose
        self._keys: list[tuple] = []  # per node of the last tree: its context key (ends with its token)
        if state is not None:
            self.load(state)

    @property
    def n(self) -> int:
        return self.store.n

    @staticmethod
    def budget_options(draft_tokens: int) -> dict:
        return {"max_nodes": draft_tokens + 1}

    # -- protocol ----------------------------------------------------------------------------------

    def begin(self, prompt_ids, sampling) -> None:
        # The store is kept across requests on purpose (hot start); the prompt is this request's corpus.
        if self.learn_from_prompt:
            self.store.add_sequence(list(prompt_ids))

    def propose(self, context: list[int]) -> TokenTree:
        h = self.n - 1
        self._tail = list(context[-h:])
        if self.max_nodes == 1:
            self._keys = [tuple(self._tail)]
            return TokenTree.root(context[-1])
        build = self._mcts if self.search == "mcts" else self._best_first
        tokens, parents, keys = build(tuple(self._tail), context[-1])
        self._keys = keys
        return TokenTree(torch.tensor(tokens), torch.tensor(parents))

    @torch.inference_mode()
    def observe(self, tree: TokenTree, logits: torch.Tensor, verdict) -> None:
        store, h = self.store, self.n - 1
        # The committed tokens (accepted drafts + bonus) are the LLM's own output.
        seq = self._tail + list(verdict.tokens)
        store.add_sequence(seq, start=len(self._tail))
        # Feedback from verification: what the target predicts after every draft path it rejected.
        if self.learn_from_target and len(tree) > 1 and len(self._keys) == len(tree):
            on_path = set(verdict.path)
            best = logits.argmax(-1).tolist()
            for i, key in enumerate(self._keys):
                if i not in on_path:
                    store.add(key[-h:], best[i])

    # -- draft makers ------------------------------------------------------------------------------

    def _mcts(self, root_key: tuple, root_token: int):
        """PUCT search; returns the visited nodes (tokens, parents, keys) with parents first."""
        store, branch, max_depth, min_prob = self.store, self.branch, self.max_depth, self.min_prob
        h, c1, budget = self.n - 1, self.exploration, self.max_nodes
        c2 = 19652.0  # MuZero's c2: the exploration weight grows slowly with the parent's visits
        tokens, parents, keys = [root_token], [-1], [root_key]
        prior, path_p, depth = [1.0], [1.0], [0]
        visits, value = [0], [0.0]
        children: list[list[int] | None] = [None]  # None: not expanded yet
        exhausted = [False]  # every reachable node below is visited, or there is none
        visited = 1
        for _ in range(self.simulations):
            if visited >= budget or exhausted[0]:
                break
            node, path = 0, [0]
            while True:
                kids = children[node]
                if kids is None:  # expand: the representative's candidates worth drafting
                    kids = []
                    if depth[node] < max_depth:
                        for tok, p in store.candidates(keys[node], branch):
                            pp = path_p[node] * p
                            if pp < min_prob:
                                continue
                            kids.append(len(tokens))
                            tokens.append(tok); parents.append(node); keys.append((keys[node] + (tok,))[-h:])
                            prior.append(p); path_p.append(pp); depth.append(depth[node] + 1)
                            visits.append(0); value.append(0.0); children.append(None); exhausted.append(False)
                    children[node] = kids
                live = [c for c in kids if not exhausted[c]]
                if not live:
                    exhausted[node] = True
                    break
                scale = (c1 + math.log((visits[node] + c2 + 1) / c2)) * math.sqrt(visits[node] + 1)
                best, best_score = -1, -1.0
                for c in live:
                    q = value[c] / visits[c] if visits[c] else prior[c]  # unvisited: its own prior
                    score = q + scale * prior[c] / (1 + visits[c])
                    if score > best_score:
                        best, best_score = c, score
                node = best
                path.append(node)
                if visits[node] == 0:  # a new node: it joins the draft, the simulation ends here
                    visited += 1
                    break
            # Back up: at each node, the probability of reaching the leaf from its parent.
            leaf_p = path_p[path[-1]]
            visits[0] += 1
            for c in path[1:]:
                visits[c] += 1
                value[c] += leaf_p / path_p[parents[c]]
            # Propagate exhaustion upwards so later simulations skip finished subtrees.
            for c in reversed(path):
                kids = children[c]
                if kids is not None and all(exhausted[k] or (visits[k] and children[k] == []) for k in kids):
                    exhausted[c] = True
                else:
                    break
        keep = [i for i in range(len(tokens)) if i == 0 or visits[i] > 0]
        index = {old: new for new, old in enumerate(keep)}
        return ([tokens[i] for i in keep], [index[parents[i]] if i else -1 for i in keep], [keys[i] for i in keep])

    def _best_first(self, root_key: tuple, root_token: int):
        """Ablation without exploration: grow the tree by the largest representative path probability."""
        store, h = self.store, self.n - 1
        tokens, parents, keys, depth = [root_token], [-1], [root_key], [0]
        heap: list[tuple[float, int, int, int]] = []  # (-path prob, tie, parent, token)
        tie = 0

        def push(node: int, p_node: float) -> None:
            nonlocal tie
            if depth[node] >= self.max_depth:
                return
            for tok, p in store.candidates(keys[node], self.branch):
                if p_node * p >= self.min_prob:
                    heapq.heappush(heap, (-p_node * p, tie, node, tok))
                    tie += 1

        push(0, 1.0)
        while heap and len(tokens) < self.max_nodes:
            neg_p, _, parent, tok = heapq.heappop(heap)
            tokens.append(tok); parents.append(parent); keys.append((keys[parent] + (tok,))[-h:])
            depth.append(depth[parent] + 1)
            push(len(tokens) - 1, -neg_p)
        return tokens, parents, keys

    # -- persistence -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the store as gzipped JSON (atomically)."""
        path = Path(path)
        data = json.dumps(self.store.to_json(self.vocab_size), separators=(",", ":")).encode()
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(gzip.compress(data, compresslevel=6))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, path: str | Path) -> None:
        """Replace the store by one saved with `save`. InputError if missing, corrupt or for another vocabulary."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"adaptive state file not found: {path}")
        try:
            raw = path.read_bytes()
            data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"adaptive state file {path} is corrupt or not an adaptive n-gram store: {e}") from e
        self.store = NGramStore.from_json(data, self.vocab_size, str(path))
