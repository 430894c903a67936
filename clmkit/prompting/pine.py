"""PINE (Wang et al. 2024, "Eliminating Position Bias of Language Models: A Mechanistic Approach"):
training-free position invariance over input segments (options, documents, responses to judge).

Two causes of position bias, two fixes, both at the level of the attention mask and position ids:

1. causal attention lets a later segment see an earlier one but not the reverse -> segments attend
   to each other *bidirectionally* (inside a segment attention stays causal);
2. RoPE makes "how far back" matter -> segments get positions by *importance*, not by where the
   user put them: the model's own attention from the question (suffix) to each segment, and the
   most important segment sits closest to the question.

    prompt = segment_prompt(tokenizer, "Which is more plausible?\\n", ["A. ...\\n", "B. ...\\n"], "Answer:")
    logits = pine_logits(model, prompt)        # next-token logits after the prompt; same for any
                                               # order of the segments (up to float rounding)

Token layout: [prefix][segment 0][segment 1]...[suffix]. The mask is a 4-D additive float mask
(0 = may attend, dtype-min = masked; see DESIGN.md: bool masks are silently wrong on some paths):

    query \\ key   prefix   own segment   other segment   suffix
    prefix        causal       -              -             -
    segment       all       causal          all           -
    suffix        all        all            all          causal

Importance is read in a first pass where every segment starts at the same position (so nothing in
it depends on the input order), then the second pass lays the segments out one after another,
least important first. Simplification vs the paper: PINE re-orders the *other* documents per
query document inside every attention layer (one key rotation per document, custom attention
code); here one global order, from the suffix's attention averaged over layers and heads, is used
for all tokens, so it runs through the unmodified HF forward. The core property (output invariant
to segment order; one segment = the plain prompt) is kept and tested.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from clmkit.errors import InputError
from clmkit.hf_adapter import Forward, new_cache
from clmkit.models import Model
from clmkit.prompting.chat import user_turn

TIE_DECIMALS = 6  # importances equal to this many decimals are ties, broken by segment content


@dataclass
class SegmentedPrompt:
    prefix: list[int]
    segments: list[list[int]]
    suffix: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prefix + [t for s in self.segments for t in s] + self.suffix

    def segment_of(self) -> torch.Tensor:
        """[n] long: -1 prefix, i for segment i, -2 suffix."""
        parts = [torch.full((len(self.prefix),), -1)]
        parts += [torch.full((len(s),), i) for i, s in enumerate(self.segments)]
        parts.append(torch.full((len(self.suffix),), -2))
        return torch.cat(parts).long()

    def permuted(self, order: list[int]) -> "SegmentedPrompt":
        return SegmentedPrompt(self.prefix, [self.segments[i] for i in order], self.suffix)


def segment_prompt(tokenizer, prefix: str, segments: list[str], suffix: str, chat: bool = False) -> SegmentedPrompt:
    """Tokenize the pieces separately (so segment boundaries are token boundaries); with `chat`, the
    chat template's user turn wraps the whole text (its head joins the prefix, its tail the suffix)."""
    if not segments or any(not s.strip() for s in segments):
        raise InputError("PINE needs at least one non-empty segment")
    if chat:
        head, tail = user_turn(tokenizer)
        prefix, suffix = head + prefix, suffix + tail

    def encode(text: str, first: bool = False) -> list[int]:
        return list(tokenizer(text, add_special_tokens=first and not chat)["input_ids"]) if text else []

    return SegmentedPrompt(encode(prefix, first=True), [encode(s) for s in segments], encode(suffix))


def pine_mask(segment_of: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, n, n] additive mask: causal, plus every segment token sees every *other* segment."""
    n = segment_of.numel()
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    in_segment = segment_of >= 0
    across = in_segment[:, None] & in_segment[None, :] & (segment_of[:, None] != segment_of[None, :])
    mask = torch.zeros(n, n, dtype=dtype)
    mask.masked_fill_(~(causal | across), torch.finfo(dtype).min)
    return mask[None, None]


def positions_in_order(prompt: SegmentedPrompt, order: list[int] | None) -> torch.Tensor:
    """[n] position ids. `order` (segment indices, first = farthest from the suffix) lays the
    segments out one after another; None puts every segment at the same start (parallel)."""
    p = len(prompt.prefix)
    lengths = [len(s) for s in prompt.segments]
    starts = [p] * len(lengths)
    if order is not None:
        at = p
        for i in order:
            starts[i] = at
            at += lengths[i]
        end = at
    else:
        end = p + max(lengths)
    parts = [torch.arange(p)] + [torch.arange(s, s + n) for s, n in zip(starts, lengths)]
    parts.append(torch.arange(end, end + len(prompt.suffix)))
    return torch.cat(parts)


def _forward_mask(forward: Forward, segment_of: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | dict:
    full = pine_mask(segment_of, forward.dtype)
    if forward.sliding_window is None:
        return full
    # Hybrid models: sliding layers also drop keys a window or more positions away (by position, as HF does).
    far = (positions[:, None] - positions[None, :]).abs() >= forward.sliding_window
    return {"full_attention": full, "sliding_attention": full.masked_fill(far[None, None], torch.finfo(forward.dtype).min)}


@contextmanager
def _eager_attention(module):
    """Attention weights are only returned by the eager kernel; switch for one pass."""
    before = module.config._attn_implementation
    module.set_attn_implementation("eager")
    try:
        yield
    finally:
        module.set_attn_implementation(before)


@torch.inference_mode()
def segment_importance(model: Model, prompt: SegmentedPrompt) -> torch.Tensor:
    """[k] mean attention a suffix token pays to one token of each segment (layers, heads, suffix
    tokens averaged), from the order-free pass (all segments at the same positions)."""
    if not prompt.suffix:
        raise InputError("PINE reads segment importance from the text after the segments: the suffix is empty")
    segment_of = prompt.segment_of()
    positions = positions_in_order(prompt, None)
    forward = Forward(model.module)
    with _eager_attention(model.module):
        out = model.module(input_ids=torch.tensor([prompt.ids]), position_ids=positions[None],
                           attention_mask=_forward_mask(forward, segment_of, positions), output_attentions=True,
                           use_cache=False, logits_to_keep=1)
    weights = torch.stack([a[0].float() for a in out.attentions]).mean(dim=(0, 1))  # [n, n]
    from_suffix = weights[segment_of == -2].mean(dim=0)  # [n]
    return torch.stack([from_suffix[segment_of == i].mean() for i in range(len(prompt.segments))])


def importance_order(prompt: SegmentedPrompt, importance: torch.Tensor) -> list[int]:
    """Segments least important first (so the most important ends next to the suffix); ties (equal
    to TIE_DECIMALS) broken by token content, so the order never depends on the input order."""
    scores = [round(float(x), TIE_DECIMALS) for x in importance]
    return sorted(range(len(scores)), key=lambda i: (scores[i], prompt.segments[i]))


def _prefill(model: Model, prompt: SegmentedPrompt, capacity: int, last_only: bool):
    """The PINE forward over the prompt: (logits, cache, next position)."""
    order = importance_order(prompt, segment_importance(model, prompt)) if len(prompt.segments) > 1 else [0]
    segment_of = prompt.segment_of()
    positions = positions_in_order(prompt, order)
    forward = Forward(model.module)
    ids = prompt.ids
    cache = new_cache(model.module, capacity)
    logits = forward(torch.tensor([ids]), positions[None], cache, _forward_mask(forward, segment_of, positions),
                     last_only=last_only)
    return logits, cache, int(positions.max()) + 1


@torch.inference_mode()
def pine_logits(model: Model, prompt: SegmentedPrompt, all_positions: bool = False) -> torch.Tensor:
    """Next-token logits [vocab] after the prompt under PINE ([n, vocab] with `all_positions`)."""
    logits, _, _ = _prefill(model, prompt, len(prompt.ids), last_only=not all_positions)
    return logits if all_positions else logits[-1]


@torch.inference_mode()
def plain_logits(model: Model, prompt: SegmentedPrompt, all_positions: bool = False) -> torch.Tensor:
    """The same tokens read causally at positions 0..n-1: the baseline PINE is compared with."""
    ids = prompt.ids
    forward = Forward(model.module)
    logits = forward(torch.tensor([ids]), torch.arange(len(ids))[None], new_cache(model.module, len(ids)),
                     last_only=not all_positions)
    return logits if all_positions else logits[-1]


@torch.inference_mode()
def pine_greedy(model: Model, prompt: SegmentedPrompt, max_new_tokens: int) -> list[int]:
    """Greedy continuation under PINE: the PINE prefill, then ordinary causal decoding after it
    (every new token sees the whole prompt, so HF's own causal mask is right)."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    logits, cache, position = _prefill(model, prompt, len(prompt.ids) + max_new_tokens, last_only=True)
    forward = Forward(model.module)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(logits[-1].argmax())
        out.append(token)
        if token in model.eos_token_ids:
            break
        logits = forward(torch.tensor([[token]]), torch.tensor([[position]]), cache)
        position += 1
    return out
