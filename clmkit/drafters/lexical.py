"""`lexical`: Lexical Unit Decoding (LUD; Sun et al., *Decoding at the Speed of Thought: Harnessing
Parallel Decoding of Lexical Units for LLMs*, LREC-COLING 2024), as a lossless drafter.

A lexical unit is a run of tokens the model predicts with confidence: token t_i joins the unit of
t_{i-1} when the target's own probability p(t_i | t_<i) >= alpha (the paper's criterion; alpha = 0.9
here), so a unit is one "hard" token followed by confident ones. The target is fine-tuned with LoRA
so that, given the text up to a unit's start and m-1 placeholder tokens [PAD] appended, its output at
the last real token is the unit's first token (ordinary next-token prediction) and its output at
[PAD]_j is the unit's (j+1)-th token:

    input   ... t_{s-1}  [PAD]_1   [PAD]_2  ...        (positions s-1, s, s+1, ...; causal attention)
    output      t_s      t_{s+1}   t_{s+2}  ...        all from ONE forward

One forward thus yields m token predictions with their probabilities; the paper's decoder emits the
first and then every further one while its probability stays >= alpha (the unit ends where the model
stops being confident). Two modes:

  * lossless (this drafter, `--drafter lexical`): the unit is a draft chain, verified by the ORIGINAL
    target through the one verifier (greedy: argmax chain; sampling: each [PAD]_j's token drawn from
    its processed distribution, recorded as q, Draw.IID). Whether position j is drafted depends only on
    max_x p_j(x) >= alpha, decided before drawing, so the stopping rule cannot bias the draw.
    The draft model is a private copy of the target with the LoRA deltas merged into its weights
    (W + lora_alpha / r * B A): one full-size forward per draft, so it pays off only when units are
    long (see docs).
  * lossy (the paper's, `decode_units` + `clm eval lexical`): the fine-tuned model decodes units
    directly, no verification; its output differs from the original model's, which `clm eval lexical`
    measures (exact match, ROUGE-L, tokens per forward).

Training (`clm train lexical`, needs peft): `LexicalLoRA` labels units in each batch from the cached
target features (lm_head(h) = the target's logits) and trains LoRA adapters on the upper blocks.
Docs: docs/drafters/lexical.md.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clmkit.drafters import register
from clmkit.drafters._draft_lm import draft_generator, positive_int
from clmkit.drafters._trained import RANDOM
from clmkit.errors import InputError
from clmkit.hf_adapter import Forward, new_cache
from clmkit.models import Model, NoTorchWeights
from clmkit.sampling import Sampling, process_logits
from clmkit.tree import Draw, TokenTree
from clmkit.train.checkpoint import check_target, read_config, shipped
from clmkit.train.loop import cpu_has_bf16

ALPHA = 0.9  # confidence that keeps a token inside a unit (labelling, and the decoder's stopping rule)
MAX_UNIT = 4  # tokens predicted per forward: the last real token + 3 [PAD]s
PLACEHOLDER = "<empty_output>"  # an unused special token of SmolLM2 whose id stands for [PAD]


def placeholder_id(tokenizer, vocab_size: int) -> int:
    """The token id that serves as [PAD]: PLACEHOLDER if the tokenizer has it, else the last id. Its own
    embedding is [PAD]'s input (frozen), and the fine-tuned copy never predicts it."""
    token_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER) if PLACEHOLDER in tokenizer.get_vocab() else None
    return int(token_id) if token_id is not None else vocab_size - 1


# -- lexical units -------------------------------------------------------------------------------


def lexical_units(confidence: list[float], usable: list[bool], alpha: float, max_unit: int) -> list[tuple[int, int]]:
    """(start, length >= 2) of every multi-token lexical unit of one sequence.

    confidence[i] = the target's p(t_i | t_<i); usable[i] = t_i is a response token (a label).
    Left to right: a unit starts at any usable token and grows while the next token is usable and
    confident (>= alpha), up to max_unit tokens; a capped run continues as the next unit."""
    units, i, n = [], 0, len(confidence)
    while i < n:
        if not usable[i]:
            i += 1
            continue
        k = 1
        while k < max_unit and i + k < n and usable[i + k] and confidence[i + k] >= alpha:
            k += 1
        if k >= 2:
            units.append((i, k))
        i += k
    return units


# -- LoRA adapters: which layers, and merging them by hand (inference needs no peft) -------------


def lora_targets(module: nn.Module, top: int) -> list[str]:
    """Qualified names of the linear layers (attention and MLP projections) of the `top` last decoder
    blocks: where LoRA adapters go. Adapting only upper blocks keeps the backward pass short (the
    frozen lower blocks run forward only), which is what makes training fit a 2-core CPU."""
    from transformers.pytorch_utils import Conv1D

    from clmkit.drafters._draft_lm import _decoder_layers

    stack, blocks = _decoder_layers(module)
    first = max(0, len(blocks) - top)
    return [name for name, sub in module.named_modules()
            if name.startswith(stack + ".") and isinstance(sub, (nn.Linear, Conv1D))
            and int(name[len(stack) + 1:].split(".")[0]) >= first]


def adapter_key(name: str) -> str:
    return "adapters." + name.replace(".", "-")


def merge_adapters(module: nn.Module, tensors: dict[str, torch.Tensor], options: dict) -> nn.Module:
    """A private copy of `module` with W += (lora_alpha / r) * B @ A merged into every adapted layer."""
    from transformers.pytorch_utils import Conv1D

    draft = copy.deepcopy(module).float().eval()
    scale = options["lora_alpha"] / options["rank"]
    with torch.no_grad():
        for name in lora_targets(draft, options["layers"]):
            layer = draft.get_submodule(name)
            a, b = tensors[adapter_key(name) + ".A.weight"].float(), tensors[adapter_key(name) + ".B.weight"].float()
            delta = scale * (b @ a)  # [out, in], nn.Linear's layout
            layer.weight += delta.T if isinstance(layer, Conv1D) else delta
    for p in draft.parameters():
        p.requires_grad_(False)
    return draft


def random_adapters(module: nn.Module, rank: int, top: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Adapters with random A and B (tests: a draft model that differs from the target)."""
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in lora_targets(module, top):
        w = module.get_submodule(name).weight
        d_in, d_out = (w.shape[0], w.shape[1]) if isinstance(module.get_submodule(name), Conv1D) else (w.shape[1], w.shape[0])
        out[adapter_key(name) + ".A.weight"] = torch.randn(rank, d_in, generator=g) / d_in ** 0.5
        out[adapter_key(name) + ".B.weight"] = torch.randn(d_out, rank, generator=g) * 0.2
    return out


# -- the unit predictor: one forward over the new context tokens + [PAD]s -------------------------


class UnitLM:
    """The fine-tuned copy, kept in step with the committed text: `predict(context)` feeds the tokens
    its cache lacks (the last one always) followed by m-1 [PAD]s, in one causal forward, and returns
    the m next-token logits [m, vocab]; the [PAD]s are then cropped from the cache."""

    def __init__(self, module: nn.Module, pad_id: int, context_length: int, vocab_size: int):
        self.module, self.pad_id, self.context_length, self.vocab_size = module, pad_id, context_length, vocab_size
        self.forward = Forward(module)
        self.cache = new_cache(module, 512)
        self.ids: list[int] = []  # committed tokens in the cache

    def reset(self) -> None:
        self.cache.crop_to(0)
        self.ids = []

    @torch.inference_mode()
    def predict(self, context: list[int], m: int) -> torch.Tensor:
        m = max(1, min(m, self.context_length - len(context) + 1))
        common = 0
        for a, b in zip(self.ids, context):
            if a != b:
                break
            common += 1
        start = min(common, len(context) - 1)  # the last token's output is the first prediction
        self.cache.crop_to(start)
        new = context[start:] + [self.pad_id] * (m - 1)
        positions = torch.arange(start, start + len(new))[None]
        logits = self.forward(torch.tensor([new]), positions, self.cache)[-m:].float()[:, : self.vocab_size]
        self.cache.crop_to(len(context))
        self.ids = list(context)
        logits[:, self.pad_id] = float("-inf")  # [PAD] is an input marker, never an output
        return logits


def unit_length(probs: torch.Tensor, alpha: float) -> int:
    """The paper's stopping rule: the first prediction always, then every next one while its top
    probability stays >= alpha. probs [m, vocab] (plain softmax)."""
    confident = (probs[1:].max(-1).values >= alpha).tolist()
    return 1 + next((j for j, ok in enumerate(confident) if not ok), len(confident))


def load_adapter(model: Model, checkpoint: str | Path | None, name: str = "lexical") -> tuple[dict, dict]:
    """(tensors, config) of a `clm train lexical` checkpoint: the shipped one by default."""
    from safetensors.torch import load_file

    path = Path(checkpoint) if checkpoint is not None else shipped(name, model.name)
    if checkpoint is None and not path.exists():
        raise InputError(f"no {name!r} adapter ships for {model.name}; train one with `clm train data --model ...` then "
                         f"`clm train {name} --model ...` and pass --draft-checkpoint PATH")
    config = read_config(path)
    if config.get("method") != name:
        raise InputError(f"{path.name} is a {config.get('method')!r} checkpoint, not {name!r}")
    check_target(config, model, path)
    return load_file(str(path)), config


def fine_tuned(model: Model, checkpoint: str | Path | None = None, rank: int = 4) -> tuple[UnitLM, dict]:
    """The fine-tuned unit predictor for `model` (adapter merged into a private copy) and its options."""
    if isinstance(model.module, NoTorchWeights):
        raise InputError("the lexical drafter runs a fine-tuned copy of the target's torch weights: use --backend torch")
    if checkpoint == RANDOM:
        options = {"rank": rank, "lora_alpha": 2 * rank, "layers": 2, "alpha": ALPHA, "max_unit": MAX_UNIT}
        tensors = random_adapters(model.module, rank, options["layers"])
    else:
        tensors, config = load_adapter(model, checkpoint)
        options = config["options"]
        missing = [n for n in lora_targets(model.module, options["layers"]) if adapter_key(n) + ".A.weight" not in tensors]
        if missing:
            raise InputError(f"the lexical adapter does not fit {model.name}: no adapter for {missing[0]}")
    pad = int(options.get("placeholder_id", placeholder_id(model.tokenizer, model.vocab_size)))
    module = merge_adapters(model.module, tensors, options)
    return UnitLM(module, pad, model.context_length, model.vocab_size), options


# -- training (`clm train lexical`): LoRA via peft on a copy of the target ----------------------


class LexicalLoRA(nn.Module):
    """The trained part of LUD: LoRA adapters on the linear layers of the `layers` last decoder blocks.

    The LoRA-wrapped copy of the target (`self.lm`) is kept out of the module registry, so the
    state dict, the optimizer and the checkpoint hold only the adapters (a few MB). [PAD] is the
    placeholder token's own (frozen) embedding: training it would send gradients through every block.
    Loss per batch (the loop's windows of the target's own outputs, with its cached features):
      * units: labelled from the target's confidence p(t_i | t_<i) = softmax(lm_head(h_{i-1}))[t_i];
      * each unit (s, k) gets k-1 [PAD]s after its anchor t_{s-1} (positions s, s+1, ...; each sees the
        text up to t_{s-1} and the earlier [PAD]s of its block), [PAD]_j labelled t_{s+j}: cross-entropy;
      * real tokens keep the target's next-token distribution: KL(target || fine-tuned), so the first
        token of every unit stays the original model's.
    All units of all windows go through one forward (a 4-D mask gives each [PAD] block its view)."""

    method = "lexical"

    def __init__(self, parts, lm: nn.Module, pad_id: int, rank: int = 8, lora_alpha: float | None = None,
                 layers: int = 8, alpha: float = ALPHA, max_unit: int = MAX_UNIT):
        super().__init__()
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise InputError("`clm train lexical` needs peft: pip install 'clmkit[lexical]' (peft==0.21.2)") from None
        self.parts = parts
        rank, max_unit = positive_int(rank, "rank"), positive_int(max_unit, "max_unit")
        if max_unit < 2 or not 0 < float(alpha) <= 1:
            raise InputError(f"max_unit must be >= 2 and alpha in (0, 1], got {max_unit}, {alpha}")
        self.options = {"rank": rank, "lora_alpha": float(lora_alpha or 2 * rank), "layers": positive_int(layers, "layers"),
                        "alpha": float(alpha), "max_unit": max_unit, "placeholder_id": int(pad_id)}
        self.depth = max_unit - 1  # [PAD] positions: what the loop's evaluation scores
        lm = copy.deepcopy(lm).float()
        for p in lm.parameters():
            p.requires_grad_(False)
        targets = lora_targets(lm, self.options["layers"])
        config = LoraConfig(r=rank, lora_alpha=self.options["lora_alpha"], lora_dropout=0.0, target_modules=targets)
        inject_adapter_in_model(config, lm)
        self.__dict__["lm"] = lm  # not a registered submodule: its frozen weights stay out of state_dict
        self.adapters = nn.ModuleDict({adapter_key(n)[len("adapters."):]: nn.ModuleDict(
            {"A": lm.get_submodule(n).lora_A["default"], "B": lm.get_submodule(n).lora_B["default"]}) for n in targets})

    @classmethod
    def for_target(cls, model: Model, **options) -> "LexicalLoRA":
        """What `clm train lexical` builds: this module needs the whole target, not only its head."""
        from clmkit.train.loop import TargetParts

        return cls(TargetParts.of(model.module), model.module, placeholder_id(model.tokenizer, model.vocab_size), **options)

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .float() reach the unregistered copy too
        self.lm._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        self.lm.train(mode)
        return super().train(mode)

    def layout(self, tokens: torch.Tensor, blocks: list[list[tuple[int, int]]]):
        """Append [PAD] blocks to B windows of L tokens. blocks[b] = [(anchor a, n)]: n [PAD]s at
        positions a+1..a+n that see tokens 0..a and their block's earlier [PAD]s. Returns (ids [B, T],
        positions [B, T], additive mask [B, 1, T, T], anchor [B, T], j [B, T]: which block row a [PAD] is)."""
        b_size, length = tokens.shape
        extra = max([sum(n for _, n in bl) for bl in blocks] + [0])
        t = length + extra
        ids = torch.cat([tokens, tokens.new_full((b_size, extra), self.options["placeholder_id"])], 1)
        positions = torch.arange(t).repeat(b_size, 1)
        allowed = torch.zeros(b_size, t, t, dtype=torch.bool)
        allowed[:, :length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
        anchor = torch.full((b_size, t), -1)
        offset = torch.zeros(b_size, t, dtype=torch.long)
        for b, block_list in enumerate(blocks):
            row = length
            for a, n in block_list:
                first = row
                for j in range(1, n + 1):
                    positions[b, row], anchor[b, row], offset[b, row] = a + j, a, j
                    allowed[b, row, : a + 1] = True
                    allowed[b, row, first: row + 1] = True
                    row += 1
            allowed[b, range(row, t), range(row, t)] = True  # unused slots see only themselves
        mask = torch.zeros(b_size, 1, t, t).masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)
        return ids, positions, mask, anchor, offset

    def run(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, keep: int = 0) -> torch.Tensor:
        """Logits of the fine-tuned copy over ids (the last `keep` rows; 0 = all). In bf16 autocast where
        the hardware multiplies bf16 natively (AMX CPUs, GPUs): ~4x faster here; the adapters stay fp32."""
        device = ids.device
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            out = self.lm(input_ids=ids, position_ids=positions.to(device), attention_mask=mask.to(device),
                          use_cache=False, logits_to_keep=keep)
        return out.logits.float()

    def confidence(self, batch) -> torch.Tensor:
        """[B, L]: the target's p(t_i | t_<i) from its cached features (1 at i = 0: no context)."""
        with torch.no_grad():
            logp = self.parts.logits(batch.hidden[:, :-1]).float().log_softmax(-1)
            conf = torch.ones(batch.tokens.shape, device=batch.tokens.device)
            conf[:, 1:] = logp.gather(-1, batch.tokens[:, 1:, None])[..., 0].exp()
        return conf

    def loss(self, batch):
        tokens, labels_ok = batch.tokens, batch.response & batch.valid
        alpha, max_unit = self.options["alpha"], self.options["max_unit"]
        conf = self.confidence(batch).cpu()
        blocks = [[(s - 1, k - 1) for s, k in lexical_units(conf[b].tolist(), labels_ok[b].tolist(), alpha, max_unit)
                   if s >= 1] for b in range(tokens.shape[0])]
        ids, positions, mask, anchor, offset = self.layout(tokens.cpu(), blocks)
        length = tokens.shape[1]
        logits = self.run(ids.to(tokens.device), positions, mask)
        # [PAD]_j of anchor a: the unit's token a + 1 + j.
        pad_rows = anchor.to(tokens.device) >= 0
        target_pos = (anchor + 1 + offset).clamp(max=length - 1).to(tokens.device)
        pad_labels = tokens.gather(1, target_pos)
        ce = F.cross_entropy(logits[pad_rows], pad_labels[pad_rows]) if pad_rows.any() else logits.sum() * 0
        # Real rows i whose next token is a response token: keep the target's distribution there.
        real = torch.zeros_like(labels_ok)
        real[:, :-1] = labels_ok[:, 1:]
        with torch.no_grad():
            target_logp = self.parts.logits(batch.hidden[real]).float().log_softmax(-1)
        kl = F.kl_div(logits[:, :length][real].log_softmax(-1), target_logp, log_target=True, reduction="batchmean")
        units = int(pad_rows.sum())
        return ce + kl, {"ce_pad": float(ce.detach()), "kl_real": float(kl.detach()), "pad_labels": units}

    @torch.no_grad()
    def position_logits(self, batch):
        """[PAD]_p after EVERY position (not only unit starts): the held-back top-1 of position p is
        how often the fine-tuned model gets the token p+1 after any position right."""
        tokens = batch.tokens
        b_size, length = tokens.shape
        ids, positions, mask, _, _ = self.layout(tokens.cpu(), [[(i, self.depth) for i in range(length)]] * b_size)
        logits = self.run(ids.to(tokens.device), positions, mask, keep=length * self.depth)
        logits = logits.reshape(b_size, length, self.depth, -1)
        for p in range(1, self.depth + 1):
            yield p, logits[:, :, p - 1]


# -- the lossless drafter ------------------------------------------------------------------------


@register("lexical")
class LexicalDrafter:
    """A lexical unit from the fine-tuned copy as a draft chain, verified by the original target."""

    name = "lexical"
    module_class = LexicalLoRA  # what `clm train lexical` trains
    torch_only = True  # runs a copy of the torch weights: `clm generate --backend auto` picks torch

    def __init__(self, model: Model, checkpoint: str | Path | None = None, budget: int | None = None,
                 alpha: float | None = None, rank: int = 4):
        """budget: tokens per unit at most (the adapter's max_unit); alpha: the stopping confidence
        (the adapter's); rank: of the random adapters that checkpoint="random" builds (tests)."""
        self.model = model
        self.lm, self.options = fine_tuned(model, checkpoint, positive_int(rank, "rank"))
        self.budget = positive_int(budget if budget is not None else self.options["max_unit"], "budget")
        self.alpha = float(alpha if alpha is not None else self.options["alpha"])
        if not 0 < self.alpha <= 1:
            raise InputError(f"alpha must be in (0, 1], got {alpha!r}")
        self.max_nodes = self.budget + 1
        self.sampling = Sampling()
        self.generator = draft_generator(self.sampling)

    @classmethod
    def budget_options(cls, draft_tokens: int) -> dict:
        return {"budget": draft_tokens}

    def begin(self, prompt_ids: list[int], sampling: Sampling | None = None) -> None:
        self.sampling = sampling if sampling is not None else Sampling()
        self.generator = draft_generator(self.sampling)

    @torch.inference_mode()
    def propose(self, context: list[int]) -> TokenTree:
        logits = self.lm.predict(list(context), self.budget)
        k = unit_length(logits.softmax(-1), self.alpha)
        if self.sampling.greedy:
            return TokenTree.chain(context[-1], logits[:k].argmax(-1).tolist())
        q = process_logits(logits[:k], self.sampling).softmax(-1)
        draft = [int(torch.multinomial(row, 1, generator=self.generator)) for row in q]
        return TokenTree.chain(context[-1], draft, Draw.IID, torch.cat([q, torch.zeros_like(q[:1])]))

    def observe(self, tree, logits, verdict) -> None:
        """Nothing to keep: the next `predict` re-aligns the copy's cache with the committed text."""


# -- the paper's lossy mode ----------------------------------------------------------------------


@torch.inference_mode()
def decode_units(lm: UnitLM, prompt: list[int], max_new_tokens: int, eos: set[int], alpha: float,
                 max_unit: int) -> tuple[list[int], int]:
    """LUD's own decoder (lossy): the fine-tuned model emits a whole unit per forward, no verification.
    Greedy. Returns (new tokens, forwards used). The copy's cache keeps what it shares with `prompt`
    from an earlier call (the same prompt decoded twice is prefilled once)."""
    context, out, forwards = list(prompt), [], 0
    while len(out) < max_new_tokens and len(context) < lm.context_length:
        logits = lm.predict(context, min(max_unit, max_new_tokens - len(out)))
        forwards += 1
        unit = logits[: unit_length(logits.softmax(-1), alpha)].argmax(-1).tolist()
        for token in unit:
            out.append(token)
            context.append(token)
            if token in eos:
                return out, forwards
    return out, forwards
