"""The decode loop: prefill, then one target forward per step over a tree of candidate tokens.

Plain decoding is the tree holding only the root (the last committed token), so speculative and
plain decoding share this one loop and the lossless property is structural:

    prefill(prompt) -> first token
    loop:
        tree    = drafter.propose(context)          # or just the root
        logits  = forward(tree)                     # one target pass, tree attention
        verdict = verify(tree, logits, sampling)    # accepted path + one bonus token
        cache.keep(verdict.path)                    # the cache again holds exactly the committed text
        drafter.observe(tree, logits, verdict)
        stream the new tokens; stop on EOS, stop string, budget or context length
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import torch

from clmkit.drafters import Drafter, make_drafter
from clmkit.errors import InputError
from clmkit.guide import Guide, check_guide
from clmkit.guide.tree import first_logits, guide_logits, guide_tree
from clmkit.backends import Backend, Sequence as BackendSequence
from clmkit.models import Model
from clmkit.sampling import Sampling, next_token
from clmkit.text_stream import TextStream
from clmkit.tree import TokenTree
from clmkit.verify import verify

Prompt = str | Sequence[int] | list[dict]


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # prompt in -> first new token out (prefill)
    decode_s: float = 0.0  # after the first token
    target_forwards: int = 0  # decode steps, each one target forward (prefill not counted)
    step_tokens: int = 0  # tokens the decode steps produced (accepted drafts + bonus)
    draft_tokens: int = 0  # draft nodes sent to verification
    accepted_tokens: int = 0  # draft nodes accepted
    accept_histogram: list[int] = field(default_factory=list)  # steps by number of accepted drafts

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean tokens per target forward (vLLM's mean acceptance length): 1 + accepted / steps."""
        return self.step_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            decode_tokens_per_s=self.decode_tokens_per_s,
            mean_accepted=self.mean_accepted,
            acceptance_rate=self.acceptance_rate,
        )
        return d


@dataclass
class Chunk:
    token_ids: list[int]  # new tokens in this chunk
    text: str  # text delta, never a split character, never part of a stop string
    stats: Stats
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length" (budget or context)
    incomplete: bool = False  # a guide's grammar was not complete when the output ended (guide=...)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    stats: Stats
    finish_reason: str | None
    incomplete: bool = False  # see Chunk.incomplete


def commit(pending: list[int], context: list[int], stats: Stats, budget: int, eos: set[int], stream: TextStream):
    """Append a step's tokens to `context` until the budget, an EOS or a stop string:
    (new tokens, text delta, finish reason or None)."""
    new, text, finish = [], "", None
    for tok in pending:
        if stats.new_tokens >= budget:
            finish = "length"
            break
        new.append(tok)
        context.append(tok)
        stats.new_tokens += 1
        if tok in eos:
            finish = "stop"
            break
        text += stream.push(tok)
        if stream.stopped:
            finish = "stop"
            break
    if finish is None and stats.new_tokens >= budget:
        finish = "length"
    if finish:
        text += stream.flush()
    return new, text, finish


class Engine:
    def __init__(self, model: Model, drafter: Drafter | str | None = None, **drafter_options):
        self.model = model
        # The backend runs every target forward (clmkit/backends); a model built by hand gets plain torch.
        self.backend: Backend = model.runner()
        self.drafter = make_drafter(drafter, model, **drafter_options) if isinstance(drafter, str) else drafter

    # -- prompts ---------------------------------------------------------------------------------

    def encode(self, prompt: Prompt, chat: bool | None = None) -> list[int]:
        """Token ids for a prompt: text (chat template applied if `chat`), a message list, or ids."""
        tok = self.model.tokenizer
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InputError("the prompt is empty")
            use_chat = self.model.chat if chat is None else chat
            if use_chat and getattr(tok, "chat_template", None) is None:
                raise InputError(f"{self.model.name} has no chat template; use --no-chat")
            if not use_chat:
                return list(tok(prompt)["input_ids"])
            prompt = [{"role": "user", "content": prompt}]
        if prompt and isinstance(prompt[0], dict):
            ids = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            return [int(i) for i in ids]
        ids = [int(i) for i in prompt]
        if not ids:
            raise InputError("the prompt is empty")
        if max(ids) >= self.model.vocab_size or min(ids) < 0:
            raise InputError(f"prompt token ids must be in [0, {self.model.vocab_size})")
        return ids

    # -- generation ------------------------------------------------------------------------------

    def complete(self, prompt: Prompt, **kwargs) -> Completion:
        text, ids, last = [], [], None
        for last in self.generate(prompt, **kwargs):
            text.append(last.text)
            ids.extend(last.token_ids)
        return Completion("".join(text), ids, last.stats, last.finish_reason, last.incomplete)

    def generate_batch(self, prompts: Sequence[Prompt], **options) -> Iterator[tuple[int, Chunk]]:
        """Decode all prompts together, one target forward per step for every running row: yields
        (index into prompts, Chunk). Options as for `generate` (no drafter/guide). clmkit/batching.py."""
        from clmkit.batching import generate_batch

        return generate_batch(self, prompts, **options)

    def complete_batch(self, prompts: Sequence[Prompt], **options) -> list[Completion]:
        parts = [([], [], None) for _ in prompts]
        for i, chunk in self.generate_batch(prompts, **options):
            parts[i][0].append(chunk.text)
            parts[i][1].extend(chunk.token_ids)
            parts[i] = (parts[i][0], parts[i][1], chunk)
        return [Completion("".join(t), ids, c.stats, c.finish_reason) for t, ids, c in parts]

    def batch_decoder(self, capacity: int = 1024):
        """A step-wise BatchDecoder (clmkit/batching.py): add/cancel requests between steps (servers)."""
        from clmkit.batching import BatchDecoder

        return BatchDecoder(self, capacity)

    def generate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 256,
        sampling: Sampling | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        chat: bool | None = None,
        drafter: Drafter | str | None = None,
        truncate: bool = False,
        ignore_eos: bool = False,
        guide: Guide | None = None,
    ) -> Iterator[Chunk]:
        """Stream chunks of new tokens and text. `sampling` or the loose sampling arguments, not both.
        `guide` (clmkit.guide) constrains or re-scores every next-token distribution, drafts included."""
        sampling = self._sampling(sampling, temperature, top_k, top_p, seed)
        check_guide(guide, sampling, ignore_eos)
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids = self._fit_context(self.encode(prompt, chat), max_new_tokens, truncate)
        if isinstance(drafter, str):
            drafter = make_drafter(drafter, self.model)
        drafter = drafter if drafter is not None else self.drafter
        return self._generate(ids, max_new_tokens, sampling, list(stop), drafter, ignore_eos, guide)

    def _sampling(self, sampling, temperature, top_k, top_p, seed) -> Sampling:
        loose = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed).items() if v is not None}
        if sampling is not None and loose:
            raise InputError("pass either sampling=Sampling(...) or temperature/top_k/top_p/seed, not both")
        return sampling if sampling is not None else Sampling(**loose)

    def _fit_context(self, ids: list[int], max_new_tokens: int, truncate: bool) -> list[int]:
        limit = self.model.context_length
        if len(ids) + 1 <= limit:
            return ids
        if not truncate:
            raise InputError(
                f"the prompt is {len(ids)} tokens but {self.model.name} has a context of {limit} tokens; "
                "shorten it or pass --truncate to keep its last tokens"
            )
        return ids[-max(1, limit - max_new_tokens) :]

    def _generate(self, ids, max_new_tokens, sampling, stop, drafter, ignore_eos, guide=None) -> Iterator[Chunk]:
        model, stats = self.model, Stats(prompt_tokens=len(ids))
        eos = set() if ignore_eos else model.eos_token_ids
        budget = min(max_new_tokens, model.context_length - len(ids))
        stream = TextStream(model.tokenizer, stop)
        generator = None if sampling.greedy else sampling.generator()
        capacity = len(ids) + budget + (drafter.max_nodes if drafter else 1)
        seq = self.backend.sequence(capacity)
        try:
            yield from self._decode(ids, seq, stats, eos, budget, stream, sampling, generator, drafter, guide)
        finally:
            seq.close()

    @property
    def forward(self):
        """The torch backend's HF forward (for code that scores with the model directly)."""
        forward = getattr(self.backend, "forward", None)
        if forward is None:
            raise InputError(f"this needs the torch backend; {self.model.name} runs on {self.backend.name}: load it with backend='torch'")
        return forward

    def _decode(self, ids, seq, stats, eos, budget, stream, sampling, generator, drafter, guide=None) -> Iterator[Chunk]:
        if drafter is not None:
            drafter.begin(list(ids), sampling)
        if guide is not None:
            guide.begin(list(ids), sampling)
        start = time.perf_counter()
        token = self._prefill(ids, seq, sampling, generator, drafter, guide)
        stats.ttft_s = time.perf_counter() - start
        context = list(ids)
        pending = [token]
        while True:
            new, text, finish = commit(pending, context, stats, budget, eos, stream)
            if guide is not None:  # the guide follows committed tokens only (clmkit/guide)
                guide.advance(new)
            stats.decode_s = time.perf_counter() - start - stats.ttft_s
            yield Chunk(new, text, stats, finish, incomplete=bool(finish) and guide is not None and not guide.complete)
            if finish:
                return
            if guide is not None and guide.finished:  # grammar complete: force EOS, no forward needed
                pending = [guide.eos]
            else:
                pending = self._step(context, seq, sampling, generator, drafter, stats, guide)

    @torch.inference_mode()
    def _prefill(self, ids, seq: BackendSequence, sampling, generator, drafter=None, guide=None) -> int:
        hidden = getattr(drafter, "needs_hidden", False)  # trained drafters read the target's features (issue 10)
        logits = seq.prefill(ids, hidden=hidden)
        if hidden:
            drafter.observe_prompt(seq.hidden_states[getattr(drafter, "hidden_layer", -1)])
        if guide is not None:
            logits = first_logits(guide, logits)
        return next_token(logits, sampling, generator)

    @torch.inference_mode()
    def _step(self, context, seq: BackendSequence, sampling, generator, drafter, stats, guide=None) -> list[int]:
        """One target forward: verify a tree rooted at context[-1]; return the tokens it commits."""
        tree = drafter.propose(context) if drafter is not None else TokenTree.root(context[-1])
        if guide is not None:  # prune what the guide forbids before the forward; one mask per node
            tree, allowed = guide_tree(guide, tree)
        hidden = getattr(drafter, "needs_hidden", False)
        # PPD: the drafter's prompt embeddings ride along in this forward (never kept in the cache)
        extra = drafter.extra_nodes(tree) if hasattr(drafter, "extra_nodes") else None
        logits = seq.tree(tree, hidden=hidden) if extra is None else seq.tree(tree, hidden=hidden, extra=extra)
        if extra is not None:
            drafter.observe_extra(seq.extra_logits)
        if guide is not None:
            logits = guide_logits(guide, tree, allowed, logits)
        verdict = verify(tree, logits, sampling, generator)
        seq.keep(verdict.path)
        if hidden:  # the final hidden state (after the last norm; or layer drafter.hidden_layer's) of every node
            drafter.observe(tree, logits, verdict, hidden=seq.hidden_states[getattr(drafter, "hidden_layer", -1)])
        elif drafter is not None:
            drafter.observe(tree, logits, verdict)
        stats.target_forwards += 1
        stats.step_tokens += len(verdict.tokens)
        stats.draft_tokens += len(tree) - 1
        stats.accepted_tokens += verdict.accepted
        if len(stats.accept_histogram) <= verdict.accepted:
            stats.accept_histogram.extend([0] * (verdict.accepted + 1 - len(stats.accept_histogram)))
        stats.accept_histogram[verdict.accepted] += 1
        return verdict.tokens
