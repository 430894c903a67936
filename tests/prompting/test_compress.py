"""The compressor: words, the requested rate, labels from the LM, the classifier, its checkpoint,
seeded and resumable training (on a tiny random model and synthetic prompts)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from clmkit.errors import InputError
from clmkit.prompting import compress_train
from clmkit.prompting.compress import (Compressor, CompressorConfig, TokenClassifier, keep_labels, load_classifier,
                                       save_checkpoint, select, self_information, split_words, word_saliency)
from clmkit.prompting.compress_data import CompressionItem

TEXT = "the quick brown fox jumps over the lazy dog, hello world 1 2 3"


def test_words_cover_the_text(tokenizer):
    words = split_words(tokenizer, "  " + TEXT + "\n")
    assert "".join(words.text) == "  " + TEXT + "\n"
    assert len(words.word_of) == len(words.token_ids)
    assert words.word_of == sorted(words.word_of) and set(words.word_of) == set(range(len(words.text)))


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_select_keeps_the_requested_rate(tokenizer, rate, seed):
    words = split_words(tokenizer, TEXT)
    scores = torch.rand(len(words.text), generator=torch.Generator().manual_seed(seed))
    kept = select(words, scores, rate)
    budget = math.floor(rate * len(words.token_ids) + 1e-9)
    longest = max(words.word_of.count(w) for w in range(len(words.text)))
    assert kept.kept_tokens <= max(budget, longest)  # one word at least, else never over the budget
    assert kept.kept_tokens > budget - longest or kept.kept_tokens == len(words.token_ids)  # greedy fills it
    assert kept.kept_words == sorted(kept.kept_words)  # original order
    if rate == 1.0:
        assert kept.text == TEXT


def test_select_prefers_high_scores(tokenizer):
    words = split_words(tokenizer, TEXT)
    scores = torch.zeros(len(words.text))
    scores[3] = 1.0  # "fox"
    assert select(words, scores, 0.1).text.strip() == "fox"
    with pytest.raises(InputError):
        select(words, scores, 0.0)
    with pytest.raises(InputError):
        split_words(tokenizer, "   ")


def test_saliency_labels_and_self_information(tiny_llama, tokenizer):
    words, saliency = word_saliency(tiny_llama, "Q: ", TEXT, "\nA:", " hello world")
    assert saliency.shape == (len(words.text),) and (saliency >= 0).all() and saliency.sum() > 0
    labels = keep_labels(saliency, 0.5)
    assert labels.sum() == math.ceil(0.5 * len(words.text))
    assert labels[saliency.argmax()] == 1 and labels[saliency.argmin()] == 0
    words2, info = self_information(tiny_llama, TEXT)
    assert info.shape == (len(words2.text),) and torch.isfinite(info).all()


def _classifier(tiny_llama, seed=0):
    embed = tiny_llama.module.get_input_embeddings().weight
    torch.manual_seed(seed)
    return TokenClassifier(CompressorConfig("tiny-llama", embed.shape[1], embed.shape[0], d_model=32, layers=1,
                                            heads=2, max_len=256, seed=seed))


def test_checkpoint_round_trip(tiny_llama, tmp_path):
    classifier = _classifier(tiny_llama).eval()
    save_checkpoint(tmp_path, classifier, {"epochs_done": 1})
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json"}  # no temp files left
    loaded = load_classifier(tmp_path)
    x = torch.randn(1, 7, classifier.config.embedding_dim)
    torch.testing.assert_close(loaded(x), classifier(x), rtol=0, atol=0)
    compressor = Compressor(loaded, tiny_llama)
    short = compressor.compress(TEXT, 0.5)
    assert 0 < short.kept_tokens <= short.total_tokens // 2 + 1
    with pytest.raises(InputError):
        load_classifier(tmp_path / "missing")


def test_compressor_refuses_another_model(tiny_llama):
    classifier = _classifier(tiny_llama)
    classifier.config.embedding_dim += 1  # as if trained on an LM with wider embeddings
    with pytest.raises(InputError, match="trained for"):
        Compressor(classifier, tiny_llama)


def _synthetic(source, split):
    words = TEXT.split()
    return [CompressionItem(f"{source}-{i}", "Q: ", " ".join(words[i % 5:] + words[: i % 5]), "\nA:", " hello world")
            for i in range(6)]


def _weights(folder):
    return load_classifier(folder).state_dict()


def test_training_is_seeded_and_resumable(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(compress_train, "load_items", _synthetic)
    small = dict(limit=6, batch_size=3, seed=1)
    monkeypatch.setattr(compress_train, "CompressorConfig",
                        lambda **kw: CompressorConfig(**{**kw, "d_model": 32, "layers": 1, "heads": 2}))
    history = compress_train.train(tiny_llama, tmp_path / "a", ["gsm8k"], epochs=2, **small)
    assert len(history["train_loss"]) == 2 and (tmp_path / "a" / "loss.png").exists()
    compress_train.train(tiny_llama, tmp_path / "b", ["gsm8k"], epochs=1, **small)
    compress_train.train(tiny_llama, tmp_path / "b", ["gsm8k"], epochs=2, **small)  # resumes at epoch 2
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    labels = (tmp_path / "b" / "labels.jsonl").read_text().splitlines()
    assert len(labels) == 6  # labelled once, reused on resume
    with pytest.raises(InputError):
        compress_train.train(tiny_llama, tmp_path / "c", ["gsm8k"], epochs=0, **small)
