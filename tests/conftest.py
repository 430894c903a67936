"""Tiny random-weight models and a tiny byte-level BPE tokenizer, built in the tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property tests check correctness, not speed: no per-example deadline (a loaded CI machine would
# otherwise fail them with DeadlineExceeded).
settings.register_profile("clmkit", deadline=None)
settings.load_profile("clmkit")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello there, general kenobi",
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🙂🚀 and more",
    "def add(a, b):\n    return a + b\n",
    "1 2 3 4 5 6 7 8 9 10 11 12",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_module(arch: str, vocab_size: int, seed: int = 0, **overrides):
    """A tiny random model; weights scaled up so logits are well separated (no near-ties)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "llama":
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "qwen2":
        config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    config.initializer_range = 0.2
    module = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    module.generation_config.eos_token_id = 0
    module.generation_config.pad_token_id = 0
    return module.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tokenizer):
    """name -> clmkit Model, one per architecture."""
    from clmkit.models import Model

    return {
        arch: Model(name=f"tiny-{arch}", module=make_module(arch, len(tokenizer)), tokenizer=tokenizer,
                    source=Path("."), chat=False)
        for arch in ("llama", "qwen2", "gpt2")
    }


@pytest.fixture(scope="session")
def tiny_llama(tiny_models):
    return tiny_models["llama"]


def loaded_text_model(model, chat: bool | None = False):
    """The reasoning layer's `ClmkitModel` around an already loaded clmkit `Model` (a tiny test model or
    the embedded one): no loading by name; no chat template unless asked."""
    from clmkit import Engine
    from clmkit.reasoning.lm import ClmkitModel

    text_model = ClmkitModel.__new__(ClmkitModel)
    text_model.name, text_model.chat, text_model.engine = model.name, chat, Engine(model)
    return text_model


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded default model (marked tests only)."""
    from clmkit.models import load

    return load("smollm2-135m")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """One intra-op thread, except for tests on the real embedded model: the tiny models' ops take
    microseconds, so a second thread only adds fork/join and spin-wait (measured: a greedy-parity
    test took 12 s of CPU with two threads, 0.5 s with one — 96 s vs 6 s wall on the loaded 2-core
    machine)."""
    if request.node.get_closest_marker("embedded"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _private_verify_cost_cache(tmp_path_factory):
    """Verify-cost curves measured during tests (ppd plans its tree from one; `bench speed` tunes from
    one) go to a temporary folder: a curve measured under a test run's load must never be reused by a
    user's later benchmark from the shared per-machine cache."""
    from clmkit.bench import verify_cost

    folder = tmp_path_factory.mktemp("verify-cost")
    original = verify_cost.cache_path
    verify_cost.cache_path = lambda key: folder / original(key).name
    yield
    verify_cost.cache_path = original
