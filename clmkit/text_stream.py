"""Token ids -> text deltas, without splitting multi-byte characters, with text-level stop strings.

Decoding each new token alone breaks byte-level BPE (a UTF-8 character can span tokens) and
SentencePiece's leading spaces, so we decode a short window of recent tokens and emit the new
suffix once it no longer ends in the replacement character (the approach TGI and vLLM use).
Stop strings are matched on the text, so they are found across token boundaries; text that could
still turn into a stop string is held back rather than streamed.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class TextStream:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.text = ""  # all decoded text so far (stop string included once found)
        self.emitted = 0  # characters of self.text already returned
        self.prefix_offset = 0
        self.read_offset = 0
        self.stopped = False  # a stop string was found
        self.stop_at: int | None = None  # token count at which the stop string was complete

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add one token; return the text that may be shown now (possibly empty)."""
        self.tokens.append(token)
        self._catch_up(final=False)
        return self._release(final=False)

    def flush(self) -> str:
        """At the end: whatever is left, including a trailing incomplete character."""
        if not self.stopped:
            self._catch_up(final=True)
        return self._release(final=True)

    def _catch_up(self, final: bool) -> None:
        prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)

    def _release(self, final: bool) -> str:
        if self.stop and not self.stopped:
            longest = max(map(len, self.stop))
            window_start = max(0, self.emitted - longest)
            hits = [i for i in (self.text.find(s, window_start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                self.stop_at = len(self.tokens)
        end = len(self.text) if (self.stopped or final) else len(self.text) - self._held_back()
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        held = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), held, -1):
                if self.text.endswith(s[:k]):
                    held = k
                    break
        return held
