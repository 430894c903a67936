"""The chat template's user turn as two strings, so a prompt can be tokenized piece by piece
(PINE's segments, the compressor's words) and still read exactly like the templated prompt."""

from __future__ import annotations

from clmkit.errors import InputError

_MARKER = "\x00USER-TEXT\x00"


def user_turn(tokenizer) -> tuple[str, str]:
    """(head, tail): `head + text + tail` == the template applied to one user message `text`,
    with the assistant's turn opened."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("this tokenizer has no chat template; use chat=False")
    wrapped = tokenizer.apply_chat_template([{"role": "user", "content": _MARKER}], add_generation_prompt=True,
                                            tokenize=False)
    head, found, tail = wrapped.partition(_MARKER)
    if not found:
        raise InputError("the chat template rewrote the user message; cannot split it into pieces")
    return head, tail
