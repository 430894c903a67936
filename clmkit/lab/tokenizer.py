"""The lab's tokenizer: a small byte-level BPE trained with `tokenizers` on the lab corpora.

Why not the embedded model's (49k tokens)? A 49k x 128 embedding would hold most of a lab model's
parameters; a 4k vocabulary keeps the compute in the layers whose behaviour the papers are about.
The BPE is trained once (a few seconds) and cached under the clmkit cache, keyed by its inputs.
Special tokens carry the objectives' markup: sentinels for span corruption / CM3, FIM markers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

N_SENTINELS = 16
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|mask|>", "<|pre|>", "<|suf|>", "<|mid|>", "<|eom|>", "<|sep|>",
            *(f"<|sent_{i}|>" for i in range(N_SENTINELS))]


class LabTokenizer:
    """Thin wrapper: encode/decode plus the special ids the objectives need by name."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        ids = {s: tok.token_to_id(s) for s in SPECIALS}
        self.eos, self.pad, self.mask = ids["<|endoftext|>"], ids["<|pad|>"], ids["<|mask|>"]
        self.pre, self.suf, self.mid, self.eom, self.sep = (ids[s] for s in ("<|pre|>", "<|suf|>", "<|mid|>", "<|eom|>", "<|sep|>"))
        self.sentinels = [ids[f"<|sent_{i}|>"] for i in range(N_SENTINELS)]
        self.special_ids = set(ids.values())

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def lab_tokenizer(texts: list[str], vocab_size: int = 4096, cache: Path | None = None) -> LabTokenizer:
    """A BPE over `texts`, cached by (texts, vocab_size) so every experiment and rerun shares it."""
    from clmkit.models import cache_dir

    key = hashlib.sha256(repr(vocab_size).encode() + b"\0".join(t.encode() for t in texts)).hexdigest()[:16]
    path = (cache or cache_dir() / "lab") / f"bpe-{vocab_size}-{key}.json"
    if path.exists():
        return LabTokenizer(Tokenizer.from_file(str(path)))
    tok = train_bpe(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    return LabTokenizer(tok)
