"""DraftLM: a draft model kept in step with the committed text, shared by `draft`, `dyspec` and `rsd`.

The draft model is either
  * a separate model with the target's tokenizer: an embedded name, a HF directory or a .gguf file
    (anything `clmkit.models.load` takes), or a loaded `Model`; or
  * `self:N`, a training-free self-draft (early exit): the target's own embedding, its first N decoder
    layers, its final norm and its LM head. Nothing is copied: `self_draft_module` builds a thin view
    of the target that shares every weight (see there for the few transformers details it relies on).

Cache. The runner owns a KVCache for the draft model that always starts with a prefix of the
committed text (`ids`, slots [0, prefix)); the nodes of the current draft tree that were fed to the
draft model follow in slots prefix, prefix+1, ... in the order they were fed. `start(context)` brings
the cache in line with a new committed context: it keeps the common prefix, keeps the tree nodes of
the previous step that the target accepted (`KVCache.keep`, no recomputation), crops the rest and
feeds only the missing tokens, in one forward. The tree nodes of a step are then grown with
`add(parent, token)` and fed in batches with `feed(nodes)`, one draft forward per batch with a tree
attention mask (a chain grown one node at a time uses plain causal attention).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from clmkit.errors import InputError
from clmkit.hf_adapter import Forward, new_cache, num_layers, text_config
from clmkit.models import Model, load
from clmkit.sampling import Sampling, process_logits
from clmkit.tree import Draw, TokenTree

SELF = "self:"


# -- options -------------------------------------------------------------------------------------


def positive_int(value, name: str) -> int:
    """An option that must be an integer >= 1 (options may arrive as strings from the CLI)."""
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise InputError(f"{name} must be >= 1, got {number}")
    return number


def int_list(value, name: str) -> list[int]:
    """A list of positive integers: [3, 2, 1] or the string "3,2,1"."""
    items = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    if not items or items == [""]:
        raise InputError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    return [positive_int(v, name) for v in items]


def default_self_layers(total: int) -> int:
    """N for `self:N` when no draft model is given: a quarter of the decoder layers, at least one.

    On SmolLM2-135M (30 layers) that is 8: deeper exits draft better but cost more per draft token
    (see docs/drafters/draft.md for the measurements behind this choice)."""
    return max(1, min(total, round(total / 4)))


# -- self-draft view -----------------------------------------------------------------------------


def _decoder_layers(module: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layer stack: the ModuleList with one entry per layer (model.layers, transformer.h, ...)."""
    total = num_layers(module)
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) == total and name:
            return name, child
    raise InputError(f"self-draft: cannot find the {total} decoder layers of {type(module).__name__}")


def self_draft_module(module: nn.Module, n: int) -> nn.Module:
    """A view of the HF causal LM `module` that runs only its first `n` decoder layers (early exit).

    Every module on the path from the causal LM down to the layer stack (e.g. LlamaForCausalLM ->
    LlamaModel) is shallow-copied with its own child table, the stack is replaced by a ModuleList of
    the first `n` layers (the same layer objects), and the copies get a config copy with
    `num_hidden_layers = n` (and `layer_types` cut to n). The embedding, final norm, LM head and the
    layers themselves are shared with the target: no weight is copied and the view's forward is the
    model's own HF forward, so the draft logits are lm_head(norm(h_n)), h_n the hidden state after
    layer n. This relies on two transformers facts (checked on 5.24 for llama, qwen2, gpt2, gemma3):
    the decoder loops over that ModuleList (llama-style models slice it by config.num_hidden_layers),
    and per-layer metadata (layer_types) lives on the config.
    """
    total = num_layers(module)
    if not 1 <= n <= total:
        raise InputError(f"self:N needs 1 <= N <= {total} (the target's decoder layers), got {n}")
    return layer_view(module, 0, n)


def layer_view(module: nn.Module, start: int, stop: int) -> nn.Module:
    """The same view over decoder layers [start, stop) (hidden-transfer runs the upper ones, start > 0:
    its caller then replaces the input of layer `start`, which the view would compute from token ids)."""
    path, layers = _decoder_layers(module)
    # transformers (5.x) records hidden states with forward hooks installed once per model, flagged on
    # the decoder: install them on the target first, so the view's copy carries the flag and never
    # hooks the shared layers twice (which would make the target report extra hidden states).
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks

        maybe_install_capturing_hooks(module.get_submodule(path.rsplit(".", 1)[0]) if "." in path else module)
    except ImportError:  # older transformers: outputs are collected without hooks
        pass
    config = copy.deepcopy(text_config(module))
    config.num_hidden_layers = stop - start
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[start:stop]
    originals = {id(module.config), id(text_config(module))}

    def view(mod: nn.Module, names: list[str]) -> nn.Module:
        if not names:
            return nn.ModuleList(list(layers)[start:stop])
        clone = copy.copy(mod)
        clone._modules = dict(mod._modules)  # own child table: the target keeps its children
        clone._modules[names[0]] = view(mod._modules[names[0]], names[1:])
        if id(getattr(mod, "config", None)) in originals:
            clone.config = config
        return clone

    return view(module, path.split("."))


# -- tokenizer check -----------------------------------------------------------------------------


def check_same_tokenizer(target: Model, draft: Model, sample: int = 2048) -> None:
    """InputError unless the draft model's tokenizer matches the target's (size and sampled token<->id maps)."""
    t, d = target.tokenizer, draft.tokenizer
    where = f"draft model {draft.name!r} and target {target.name!r}"
    if len(t) != len(d):
        raise InputError(f"{where} have different tokenizers ({len(d)} vs {len(t)} tokens); "
                         "a draft model must share the target's tokenizer")
    n = len(t)
    ids = sorted(set(torch.linspace(0, n - 1, min(sample, n)).long().tolist()))
    t_tokens, d_tokens = t.convert_ids_to_tokens(ids), d.convert_ids_to_tokens(ids)
    for i, a, b in zip(ids, t_tokens, d_tokens):
        if a != b:
            raise InputError(f"{where} have different tokenizers: id {i} is {b!r} in the draft, {a!r} in the "
                             "target; a draft model must share the target's tokenizer")
    tv, dv = t.get_vocab(), d.get_vocab()
    for token in t_tokens[:: max(1, len(t_tokens) // 256)]:
        if token is not None and tv.get(token) != dv.get(token):
            raise InputError(f"{where} have different tokenizers: {token!r} maps to different ids")
    if min(target.vocab_size, draft.vocab_size) < n:
        raise InputError(f"{where}: a model's output layer is smaller than the tokenizer ({n} tokens)")


# -- the runner ----------------------------------------------------------------------------------


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    return next(i for i in range(n) if a[i] != b[i])


class DraftLM:
    """A draft model synchronised with the committed context; grows one draft tree per step."""

    def __init__(self, target: Model, draft: str | Model | None = None):
        self.target_vocab = target.vocab_size
        if draft is None:
            draft = f"{SELF}{default_self_layers(num_layers(target.module))}"
        if isinstance(draft, str) and draft.startswith(SELF):
            layers = draft[len(SELF):]
            if not layers.strip().isdigit():
                raise InputError(f"self-draft takes a layer count, like self:8; got {draft!r}")
            self.module = self_draft_module(target.module, int(layers))
            self.name = f"{SELF}{int(layers)}"
            self.context_length = target.context_length
        else:
            model = draft if isinstance(draft, Model) else load(str(draft))
            check_same_tokenizer(target, model)
            self.module, self.name, self.context_length = model.module, model.name, model.context_length
        self.forward = Forward(self.module)
        self.cache = new_cache(self.module, 512)
        self.ids: list[int] = []  # committed tokens whose K/V fill slots [0, prefix)
        self.draft_forwards = 0  # counters, for stats and tests
        self.fed_tokens = 0
        self._reset_tree(None)

    # tree state of the current step: node 0 is the root (context[-1]); slot[i] = i's slot after the
    # prefix, or -1 while not fed.
    def _reset_tree(self, root: int | None) -> None:
        self.tokens: list[int] = [] if root is None else [root]
        self.parents: list[int] = [] if root is None else [-1]
        self.depth: list[int] = [] if root is None else [0]
        self.slot: list[int] = [] if root is None else [0]
        self.fed: list[int] = [] if root is None else [0]  # nodes in slot order
        self._chain = True  # the fed nodes form one path from the root: causal attention suffices

    @property
    def prefix(self) -> int:
        return len(self.ids)

    def room(self, context: Sequence[int]) -> int:
        """How deep a tree rooted at context[-1] may grow within the draft model's context."""
        return self.context_length - len(context)

    def reset(self) -> None:
        self.cache.crop_to(0)
        self.ids = []
        self._reset_tree(None)

    # -- logits -> distributions -----------------------------------------------------------------

    def _adapt(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft logits in the target's vocabulary width (same tokenizer, possibly padded differently)."""
        logits = logits.float()
        width = logits.shape[-1]
        if width > self.target_vocab:
            return logits[..., : self.target_vocab]
        if width < self.target_vocab:
            pad = logits.new_full((*logits.shape[:-1], self.target_vocab - width), float("-inf"))
            return torch.cat([logits, pad], -1)
        return logits

    @staticmethod
    def probs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """The draft's next-token distribution: processed like the target's when sampling (that is what
        the children are drawn from and what TokenTree.q records); the plain softmax when greedy."""
        if sampling.greedy:
            return logits.float().softmax(-1)
        return process_logits(logits, sampling).softmax(-1)

    # -- synchronisation -------------------------------------------------------------------------

    def start(self, context: Sequence[int]) -> torch.Tensor:
        """Align the cache with `context` and start a tree rooted at context[-1]; its logits [vocab]."""
        context = list(context)
        c = _common_prefix(self.ids, context)
        if c == self.prefix and self.fed and c < len(context) and context[c] == self.tokens[0]:
            # Reuse the previous step's fed tree nodes along the committed continuation.
            path, node = [0], 0
            for tok in context[c + 1 :]:
                node = next((k for k in self._fed_children(node) if self.tokens[k] == tok), None)
                if node is None:
                    break
                path.append(node)
            self.cache.keep(torch.tensor([self.slot[k] for k in path]), start=c)
            c += len(path)
        c = min(c, len(context) - 1)  # the root is always fed: its logits are what we need
        self.cache.crop_to(c)
        new = context[c:]
        logits = self.forward(torch.tensor([new]), torch.arange(c, len(context))[None], self.cache, last_only=True)
        self.draft_forwards += 1
        self.fed_tokens += len(new)
        self.ids = context[:-1]
        self._reset_tree(context[-1])
        return self._adapt(logits[-1])

    def _fed_children(self, node: int) -> list[int]:
        return [k for k in self.fed if self.parents[k] == node]

    # -- tree growth -----------------------------------------------------------------------------

    def add(self, parent: int, token: int) -> int:
        """A new draft node (not fed yet) under `parent`; children of a node are kept in the order added."""
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depth.append(self.depth[parent] + 1)
        self.slot.append(-1)
        return len(self.tokens) - 1

    def feed(self, nodes: Sequence[int]) -> torch.Tensor:
        """Run the draft model on `nodes` (each one's parent already fed, or earlier in `nodes`) in one
        forward; their next-token logits [len(nodes), vocab]."""
        nodes = list(nodes)
        start_slot = len(self.fed)
        chain = self._chain and len(nodes) == 1 and self.parents[nodes[0]] == self.fed[-1]
        for k in nodes:
            if self.slot[k] >= 0 or self.slot[self.parents[k]] < 0:
                raise ValueError(f"feed: node {k} is already fed or its parent is not")
            self.slot[k] = len(self.fed)
            self.fed.append(k)
        ids = torch.tensor([[self.tokens[k] for k in nodes]])
        positions = torch.tensor([[self.prefix + self.depth[k] for k in nodes]])
        mask = None
        if not chain:
            self._chain = False
            # The fed nodes in slot order form a tree (parents are fed first); its mask over
            # prefix + slots, restricted to the new rows, is exactly what these nodes may attend to.
            order = {k: i for i, k in enumerate(self.fed)}
            sub = TokenTree(torch.tensor([self.tokens[k] for k in self.fed]),
                            torch.tensor([-1] + [order[self.parents[k]] for k in self.fed[1:]]))
            full = self.forward.tree_mask(sub, self.prefix)
            rows = slice(start_slot, None)
            mask = {kind: m[:, :, rows] for kind, m in full.items()} if isinstance(full, dict) else full[:, :, rows]
        logits = self.forward(ids, positions, self.cache, mask)
        self.draft_forwards += 1
        self.fed_tokens += len(nodes)
        return self._adapt(logits)

    def tree(self, draw: Draw = Draw.DETERMINISTIC, q: torch.Tensor | None = None) -> TokenTree:
        return TokenTree(torch.tensor(self.tokens), torch.tensor(self.parents), draw=draw, q=q)


# -- shared drafter plumbing ---------------------------------------------------------------------


def draft_generator(sampling: Sampling) -> torch.Generator:
    """The drafter's own generator: seeded from the target's seed (reproducible runs), never the same stream."""
    g = torch.Generator()
    g.manual_seed((sampling.seed * 1_000_003 + 7919) % 2**63 if sampling.seed is not None else torch.seed())
    return g


def gumbel(shape, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0)
    return -torch.log(-torch.log(u))


class DraftModelDrafter:
    """Base of the draft-model drafters: a DraftLM, the target's sampling settings, a generator."""

    name = "draft-model"
    max_nodes = 1
    takes_draft_model = True

    def __init__(self, model: Model, draft_model: str | Model | None = None, **options):
        if options:
            raise InputError(f"unknown option(s) for drafter {self.name!r}: {', '.join(sorted(options))}")
        self.lm = DraftLM(model, draft_model)
        self.sampling = Sampling()
        self.generator = draft_generator(self.sampling)

    def begin(self, prompt_ids: list[int], sampling: Sampling | None = None) -> None:
        self.sampling = sampling if sampling is not None else Sampling()
        self.generator = draft_generator(self.sampling)

    def observe(self, tree, logits, verdict) -> None:
        """Nothing to do: the next `start` re-aligns the draft cache with what was committed."""
