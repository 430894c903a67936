"""Prompt compression as token classification (LLMLingua-2, Pan et al. 2024), distilled from the
target LM itself, plus the LLMLingua-1-style baseline.

LLMLingua-2 asks GPT-4 which words of a prompt may be dropped, trains a bidirectional encoder
(XLM-RoBERTa) to label every token keep/drop, and keeps the words with the highest keep
probability up to the requested rate. Offline there is no GPT-4, so the labels come from the
target LM (`word_saliency`): how much the log-likelihood of the answer (GSM8K's gold solution, or
the LM's own greedy reply) changes when a word is removed, to first order (gradient x embedding,
summed over the word's tokens: one forward + backward per prompt instead of one forward per word).
The words with the highest saliency are labelled keep (`keep_fraction` of each prompt).

    compressor = Compressor.load("runs/compressor", model)    # after `clm train compressor`
    short = compressor.compress(text, rate=0.5)               # .text, .kept_tokens, .total_tokens

The classifier (`TokenClassifier`) reads features of the frozen target LM (`token_features`: its
hidden states after layer `feature_layer`, -1 = the last, 0 = the input embeddings), so its
checkpoint holds only its own small weights and names the LM it belongs to. The LM is causal; the
encoder on top of it is bidirectional, so every token's label sees both sides (LLMLingua-2's point). Everything works on words (runs of
non-space characters with their trailing space); a word's score is the mean over its tokens.
Baselines with the same word selection: `self_information` (LLMLingua-1: drop the words the LM
finds most predictable, -log p under the target LM itself) and random scores (negative control).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from clmkit.errors import InputError
from clmkit.files import atomic_write
from clmkit.models import Model


@dataclass
class Words:
    text: list[str]  # each word with its trailing whitespace; "".join(text) is the input
    token_ids: list[int]  # the input's tokens
    word_of: list[int]  # token -> word index


def split_words(tokenizer, text: str) -> Words:
    """Words and tokens of `text`, each token assigned to the word its first character falls in."""
    if not text.strip():
        raise InputError("cannot compress an empty text")
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+\s*", text)]
    lead = len(text) - len(text.lstrip())
    if lead:  # leading whitespace belongs to the first word
        spans[0] = (0, spans[0][1])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in spans]
    word_of = []
    for start, end in enc["offset_mapping"]:
        # a token starting in a word's trailing whitespace ("Ġword" byte-level tokens) belongs to the next word
        position = start if start == end else start + len(text[start:end]) - len(text[start:end].lstrip())
        word_of.append(max(0, bisect.bisect_right(starts, min(position, len(text) - 1)) - 1))
    return Words([text[s:e] for s, e in spans], list(enc["input_ids"]), word_of)


def word_scores(words: Words, token_scores: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """[n_words] from [n_tokens]: the mean (or sum) of each word's tokens."""
    index = torch.tensor(words.word_of)
    total = torch.zeros(len(words.text)).index_add_(0, index, token_scores.float())
    if reduce == "sum":
        return total
    count = torch.zeros(len(words.text)).index_add_(0, index, torch.ones(len(index)))
    return total / count.clamp(min=1)


@dataclass
class Compressed:
    text: str
    kept_tokens: int  # tokens of the kept words, counted in the original tokenization
    total_tokens: int
    kept_words: list[int]

    @property
    def rate(self) -> float:
        return self.kept_tokens / self.total_tokens


def select(words: Words, scores: torch.Tensor, rate: float) -> Compressed:
    """Keep the best-scored words, in their original order, while their tokens fit in
    floor(rate x tokens) (at least one word); ties go to the earlier word."""
    if not 0.0 < rate <= 1.0:
        raise InputError(f"the compression rate must be in (0, 1], got {rate}")
    per_word = [0] * len(words.text)
    for w in words.word_of:
        per_word[w] += 1
    total = len(words.token_ids)
    budget = math.floor(rate * total + 1e-9)
    kept, used = [], 0
    for w in sorted(range(len(per_word)), key=lambda i: (-float(scores[i]), i)):
        if used + per_word[w] <= budget or not kept:
            kept.append(w)
            used += per_word[w]
    kept.sort()
    return Compressed("".join(words.text[w] for w in kept).strip(), used, total, kept)


# ---- labels from the target LM ------------------------------------------------------------------


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def word_saliency(model: Model, before: str, text: str, after: str, answer: str) -> tuple[Words, torch.Tensor]:
    """First-order effect of removing each word of `text` on log p(answer | before + text + after):
    |sum over the word's tokens of (embedding . d logp / d embedding)|."""
    tok = model.tokenizer
    words = split_words(tok, text)
    head, tail, target = _ids(tok, before), _ids(tok, after), _ids(tok, answer)
    if not target:
        raise InputError("the answer used for labels is empty")
    ids = torch.tensor([head + words.token_ids + tail + target])
    embed = model.module.get_input_embeddings()
    with torch.enable_grad():
        x = embed(ids).detach().requires_grad_(True)
        logits = model.module(inputs_embeds=x, use_cache=False).logits[0].float()
        start = ids.shape[1] - len(target)
        logp = torch.log_softmax(logits[start - 1:-1], dim=-1).gather(1, ids[0, start:, None]).sum()
        (grad,) = torch.autograd.grad(logp, x)
    span = slice(len(head), len(head) + len(words.token_ids))
    per_token = (grad[0, span] * x[0, span].detach()).sum(-1)
    return words, word_scores(words, per_token, reduce="sum").abs()


def keep_labels(saliency: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """[n_words] 1.0 for the ceil(keep_fraction x n) most salient words."""
    k = max(1, math.ceil(keep_fraction * saliency.numel()))
    labels = torch.zeros(saliency.numel())
    labels[saliency.argsort(descending=True, stable=True)[:k]] = 1.0
    return labels


@torch.inference_mode()
def self_information(model: Model, text: str, before: str = "") -> tuple[Words, torch.Tensor]:
    """LLMLingua-1's score: -log p(token | everything before it) under the LM, per word (mean)."""
    tok = model.tokenizer
    words = split_words(tok, text)
    head = _ids(tok, before) or [model.tokenizer.bos_token_id or 0]
    ids = torch.tensor([head + words.token_ids])
    logits = model.module(input_ids=ids, use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits[len(head) - 1:-1], dim=-1).gather(1, ids[0, len(head):, None])[:, 0]
    return words, word_scores(words, -logp)


# ---- the classifier -----------------------------------------------------------------------------


@dataclass
class CompressorConfig:
    target_model: str  # whose frozen features the classifier reads
    embedding_dim: int  # width of those features (the LM's hidden size)
    vocab_size: int
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 2048
    keep_fraction: float = 0.5  # label: this fraction of each training prompt's words is "keep"
    seed: int = 0
    feature_layer: int = -1  # hidden states after this LM layer (-1 = last, 0 = input embeddings)


@torch.inference_mode()
def token_features(model: Model, token_ids: list[int], layer: int) -> torch.Tensor:
    """[T, hidden] frozen features of the target LM for one text: its input embeddings (layer 0),
    or its hidden states after `layer` (one forward, no gradient)."""
    ids = torch.tensor([token_ids])
    if layer == 0:
        return model.module.get_input_embeddings()(ids)[0].float()
    out = model.module(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    return out.hidden_states[layer][0].float()


class TokenClassifier(nn.Module):
    """Bidirectional (no causal mask) Transformer encoder over frozen LM features -> keep logit."""

    def __init__(self, config: CompressorConfig):
        super().__init__()
        self.config = config
        self.project = nn.Linear(config.embedding_dim, config.d_model)
        self.position = nn.Embedding(config.max_len, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.heads, 4 * config.d_model, dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.head = nn.Linear(config.d_model, 1)

    def forward(self, embeddings: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, E] frozen LM features (+ [B, T] bool padding) -> [B, T] keep logits."""
        t = embeddings.shape[1]
        if t > self.config.max_len:
            raise InputError(f"the compressor reads at most {self.config.max_len} tokens at once, got {t}")
        h = self.project(embeddings) + self.position(torch.arange(t))[None]
        h = self.encoder(h, src_key_padding_mask=padding)
        return self.head(h)[..., 0]


def save_checkpoint(folder, classifier: TokenClassifier, extra: dict | None = None) -> None:
    """model.safetensors + config.json, each written to a temporary name and renamed (atomic)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "model.safetensors")
    atomic_write(weights, lambda p: save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, p))
    config = {**asdict(classifier.config), **(extra or {})}
    atomic_write(os.path.join(folder, "config.json"), lambda p: p.write_text(json.dumps(config, indent=2), encoding="utf-8"))


def load_classifier(folder) -> TokenClassifier:
    from safetensors.torch import load_file

    config_path, weights = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    if not (os.path.isfile(config_path) and os.path.isfile(weights)):
        raise InputError(f"no compressor checkpoint in {folder} (config.json + model.safetensors); "
                         "train one with: clm train compressor")
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    fields = CompressorConfig.__dataclass_fields__
    classifier = TokenClassifier(CompressorConfig(**{k: v for k, v in raw.items() if k in fields}))
    classifier.load_state_dict(load_file(weights))
    return classifier.eval()


class Compressor:
    """A trained TokenClassifier bound to its target LM."""

    def __init__(self, classifier: TokenClassifier, model: Model):
        embed = model.module.get_input_embeddings().weight
        c = classifier.config
        if tuple(embed.shape) != (c.vocab_size, c.embedding_dim):
            raise InputError(f"this compressor was trained for {c.target_model} (embeddings {c.vocab_size}x"
                             f"{c.embedding_dim}), not {model.name} ({embed.shape[0]}x{embed.shape[1]})")
        self.classifier, self.model = classifier.eval(), model

    @classmethod
    def load(cls, folder, model: Model) -> "Compressor":
        return cls(load_classifier(folder), model)

    @torch.inference_mode()
    def word_keep_probability(self, text: str) -> tuple[Words, torch.Tensor]:
        words = split_words(self.model.tokenizer, text)
        features = token_features(self.model, words.token_ids, self.classifier.config.feature_layer)
        logits = self.classifier(features[None])[0]
        return words, word_scores(words, torch.sigmoid(logits))

    def compress(self, text: str, rate: float) -> Compressed:
        words, scores = self.word_keep_probability(text)
        return select(words, scores, rate)
