"""Grammar-constrained decoding with llguidance: JSON schema, regex, Lark grammar, or a choice of strings.

The grammar engine is llguidance (maintained, Rust, no heavy dependencies): an `LLMatcher` keeps the
parser state, fills a token bitmask for the next token in microseconds, consumes tokens, and rolls
back - which is what walking a draft tree depth-first needs. clmkit only unpacks the bitmask into a
bool row and applies it (no torch.compile'd kernel: llguidance's compiles for ~27 s on first call).

When the grammar is complete and nothing but EOS may follow (`finished`), the mask allows exactly one
EOS token (the model's primary one), so the engine's forced EOS and a verified EOS are the same token.
"""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import llguidance.hf
import numpy as np
import torch

from clmkit.errors import InputError
from clmkit.guide import register

_TOKENIZERS: dict[tuple, tuple] = {}  # (id(tokenizer), vocab, eos) -> (tokenizer, LLTokenizer)


def ll_tokenizer(model, eos: list[int]) -> llguidance.LLTokenizer:
    """llguidance's description of the model's tokenizer (built once per tokenizer: ~1 s for 49k tokens)."""
    tok = model.tokenizer
    key = (id(tok), model.vocab_size, tuple(eos))
    if key not in _TOKENIZERS:
        if len(tok) > model.vocab_size:
            raise InputError(f"{model.name}: the tokenizer has {len(tok)} tokens but the model only {model.vocab_size}")
        try:
            built = llguidance.hf.from_tokenizer(tok, n_vocab=model.vocab_size, eos_token=eos)
        except ValueError as e:  # a slow (Python) tokenizer
            raise InputError(f"grammar-constrained decoding needs a fast tokenizer: {e}") from e
        _TOKENIZERS[key] = (tok, built)  # keep tok alive so its id is not reused
    return _TOKENIZERS[key][1]


JSON_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
JSON_FLEXIBLE = {"whitespace_flexible": True}


def grammar_text(json_schema=None, regex: str | None = None, lark: str | None = None,
                 choice: list[str] | None = None, flexible_whitespace: bool = False) -> tuple[str, str]:
    """(kind, llguidance grammar) from exactly one description. A schema may be a dict, JSON text or a path."""
    given = {k: v for k, v in dict(json_schema=json_schema, regex=regex, lark=lark, choice=choice).items() if v is not None}
    if len(given) != 1:
        raise InputError("give exactly one of a JSON schema, a regex, a Lark grammar or a choice list"
                         + (f" (got {', '.join(given)})" if given else ""))
    kind, value = next(iter(given.items()))
    if kind == "json_schema":
        if isinstance(value, (str, Path)) and not str(value).lstrip().startswith("{"):
            value = read_text(Path(value), "JSON schema")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise InputError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(value, (dict, bool)):
            raise InputError(f"a JSON schema is an object (or true/false), got {type(value).__name__}")
        # Compact separators like json.dumps (", ", ": ") and no free whitespace by default: small models
        # otherwise fill flexible whitespace forever. A schema's "x-guidance" options override this.
        options = JSON_FLEXIBLE if flexible_whitespace else JSON_COMPACT
        return "JSON schema", llguidance.LLMatcher.grammar_from_json_schema(json.dumps(value), defaults=options)
    if kind == "regex":
        if not isinstance(value, str):
            raise InputError("the regex must be a string")
        return "regex", llguidance.LLMatcher.grammar_from_regex(value)
    if kind == "lark":
        if isinstance(value, Path):
            value = read_text(value, "Lark grammar")
        return "Lark grammar", llguidance.LLMatcher.grammar_from_lark(value)
    options = list(value)
    if not options or not all(isinstance(o, str) and o for o in options):
        raise InputError("a choice needs at least one option, each a non-empty string")
    # Lark string literals; json.dumps escapes quotes, backslashes and control characters.
    return "choice", llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(o) for o in options))


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the {what} file {path}: {e}") from None


def check_grammar(kind: str, grammar: str, tokenizer: llguidance.LLTokenizer) -> None:
    """A clear error before any generation: invalid grammars, and schema features llguidance lacks."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if not is_error:
        return
    message = messages[0].strip() if messages else "unknown error"
    if kind == "JSON schema" and ("Unimplemented" in message or "not supported" in message.lower()):
        raise InputError(f"the JSON schema uses features llguidance {llguidance.__version__} does not support: {message}")
    raise InputError(f"invalid {kind}: {message}")


@register("grammar")
class Grammar:
    """Constrain the output to a JSON schema, a regex, a Lark grammar or a choice of strings."""

    name = "grammar"
    reweights = False
    greedy_only = False

    def __init__(self, model, *, json_schema=None, regex: str | None = None, lark: str | None = None,
                 choice: list[str] | None = None, flexible_whitespace: bool = False):
        if not model.eos_token_ids:
            raise InputError(f"{model.name} has no EOS token: a grammar-constrained output could never end")
        eos_ids = sorted(model.eos_token_ids)
        self.eos_ids = frozenset(eos_ids)
        primary = model.tokenizer.eos_token_id
        self.eos = primary if primary in model.eos_token_ids else eos_ids[0]
        self.kind, grammar = grammar_text(json_schema, regex, lark, choice, flexible_whitespace)
        tokenizer = ll_tokenizer(model, [self.eos] + [e for e in eos_ids if e != self.eos])
        check_grammar(self.kind, grammar, tokenizer)
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        self._raise_if_error()
        self.vocab_size = model.vocab_size

    def _raise_if_error(self) -> None:
        if self.matcher.is_error():
            raise InputError(f"invalid {self.kind}: {self.matcher.get_error()}")

    def begin(self, prompt_ids: list[int], sampling=None) -> None:
        self.matcher.reset()

    def allowed(self) -> torch.Tensor:
        if self.matcher.is_stopped():
            row = torch.zeros(self.vocab_size, dtype=torch.bool)
            row[self.eos] = True
            return row
        # The bitmask is one bit per token, little-endian within each 32-bit word.
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        return torch.from_numpy(bits[: self.vocab_size].astype(bool))

    def reweight(self, logits: torch.Tensor, node: int) -> torch.Tensor:
        return logits

    def advance(self, tokens: list[int]) -> None:
        for t in tokens:  # one at a time: consume_tokens([eos]) fails on a stopped matcher, consume_token does not
            if not self.matcher.consume_token(t):
                raise RuntimeError(f"grammar matcher rejected committed token {t}: {self.matcher.get_error()}")

    def rollback(self, n: int) -> None:
        if n and not self.matcher.rollback(n):
            raise RuntimeError(f"grammar matcher could not roll back {n} tokens: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()

    @property
    def complete(self) -> bool:
        return self.matcher.is_accepting()
