from hypothesis import given, settings
from hypothesis import strategies as st

from clmkit.text_stream import TextStream

TEXTS = ["héllo wörld — naïve café", "日本語のテキスト", "emoji 🙂🚀 and more", "the quick brown fox"]


def stream_all(tokenizer, ids, stop=()):
    s = TextStream(tokenizer, stop)
    deltas = []
    for t in ids:
        deltas.append(s.push(t))
        if s.stopped:
            break
    deltas.append(s.flush())
    return s, deltas


def test_multibyte_characters_never_split(tokenizer):
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        # byte-level BPE splits some of these characters over several tokens
        _, deltas = stream_all(tokenizer, ids)
        assert all("\ufffd" not in d for d in deltas)
        assert "".join(deltas) == tokenizer.decode(ids)


def test_multibyte_split_is_exercised(tokenizer):
    """Guard for the test above: at least one character really spans tokens."""
    ids = tokenizer("🙂🚀日本")["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)


def test_stop_string_across_token_boundaries(tokenizer):
    text = "the quick brown fox jumps over the lazy dog"
    ids = tokenizer(text)["input_ids"]
    s, deltas = stream_all(tokenizer, ids, stop=["n fox"])
    assert s.stopped and "".join(deltas) == "the quick brow"
    assert all("n fo" not in d for d in deltas)


@settings(max_examples=60, deadline=None)
@given(text=st.sampled_from(TEXTS + ["hello world, hello there"]), start=st.integers(0, 20), length=st.integers(1, 6))
def test_stop_truncates_at_first_occurrence(tokenizer, text, start, length):
    stop = text[start : start + length]
    if not stop:
        return
    ids = tokenizer(text)["input_ids"]
    s, deltas = stream_all(tokenizer, ids, stop=[stop])
    full = tokenizer.decode(ids)
    assert "".join(deltas) == full[: full.find(stop)]
    assert s.stopped
