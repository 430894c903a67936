"""`lexical` (Lexical Unit Decoding): unit labelling, the [PAD] predictor, the lossless drafter's
sampling path (greedy parity on three architectures runs in test_trained_drafters.py), the paper's
lossy decoder, LoRA training + adapter round trip, and bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from clmkit import cli
from clmkit.drafters import make_drafter
from clmkit.drafters.lexical import LexicalDrafter, UnitLM, decode_units, lexical_units, lora_targets
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.models import Model
from clmkit.sampling import Sampling
from clmkit.tree import Draw, TokenTree
from tests.drafters.harness import PathMemo, assert_greedy_parity, assert_sampling_lossless, memoised_pair

CONTEXT = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]


def test_units_follow_the_confidence_criterion():
    conf = [1.0, 0.95, 0.5, 0.99, 0.99, 0.99, 0.99, 0.2, 0.97]
    assert lexical_units(conf, [True] * 9, alpha=0.9, max_unit=4) == [(0, 2), (2, 4), (7, 2)]
    # a capped run continues as the next unit; non-response tokens never join one
    assert lexical_units(conf, [True] * 9, alpha=0.9, max_unit=3) == [(0, 2), (2, 3), (5, 2), (7, 2)]
    assert lexical_units(conf, [False, False] + [True] * 7, alpha=0.9, max_unit=4) == [(2, 4), (7, 2)]
    assert lexical_units(conf, [True] * 9, alpha=0.999, max_unit=4) == []


def test_rouge_l_and_prefix_scores():
    from clmkit.bench.lexical import rouge_l, shared_prefix

    assert rouge_l([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0 and rouge_l([5, 6], [1, 2]) == 0.0
    assert abs(rouge_l([1, 9, 3, 4], [1, 2, 3, 4]) - 0.75) < 1e-9  # LCS 3 of 4 both ways
    assert shared_prefix([1, 2, 9, 4], [1, 2, 3, 4]) == 0.5


def test_pad_predictions_equal_a_fresh_forward(tiny_llama):
    """predict(): the cached text + new tokens + [PAD]s in one forward, [PAD]s dropped after; row j equals
    the copy's logits after context + j [PAD]s computed from scratch, also on a reused cache."""
    drafter = make_drafter("lexical", tiny_llama, checkpoint="random")
    lm = drafter.lm
    for context in (CONTEXT, CONTEXT + [9, 10], CONTEXT + [9, 10, 11, 12]):
        rows = lm.predict(context, 3)
        with torch.inference_mode():
            fresh = lm.module(input_ids=torch.tensor([context + [lm.pad_id] * 2])).logits[0, -3:]
            fresh[:, lm.pad_id] = float("-inf")
        assert torch.allclose(rows, fresh, atol=1e-4)
    assert lm.ids == CONTEXT + [9, 10, 11, 12] and lm.cache.length == len(lm.ids)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_identical_with_long_units(tiny_models, arch):
    """alpha ~ 0: every step drafts the whole 4-token unit (a random model is never confident, so the
    default alpha would draft one token), all verified by the original target."""
    model = tiny_models[arch]
    drafter = make_drafter("lexical", model, checkpoint="random", budget=4, alpha=1e-6)
    out = assert_greedy_parity(model, drafter, CONTEXT, max_new_tokens=32)
    assert out.stats.draft_tokens >= 4 * out.stats.target_forwards - 4


def memo_drafter(tiny_llama, **options):
    """The drafter's fine-tuned copy behind PathMemo (real logits per token path, computed once)."""
    drafter = make_drafter("lexical", tiny_llama, checkpoint="random", **options)
    lm = drafter.lm
    drafter.lm = UnitLM(PathMemo(lm.module), lm.pad_id, lm.context_length, lm.vocab_size)
    return drafter


def test_sampling_matches_target(tiny_llama):
    """4,000 steps: 2-token units (alpha ~ 0 always drafts the whole budget), drawn from the copy's
    processed distributions; committed tokens follow the original target (chi-square, tests/stats.py).
    top_k = 8 keeps the sampled paths few, so the memoised target computes each once."""
    target, _ = memoised_pair(tiny_llama)
    drafter = memo_drafter(tiny_llama, budget=2, alpha=1e-6)
    sampling = Sampling(temperature=0.8, top_k=8, seed=0)
    assert_sampling_lossless(target, drafter, CONTEXT, sampling, trials=4000)
    drafter.begin(CONTEXT[:-1], sampling)
    tree = drafter.propose(CONTEXT)
    assert len(tree) == 3 and tree.draw is Draw.IID and tree.q.shape[0] == 3


def test_sampling_negative_control(tiny_llama):
    """The check can fail: argmax drafts labelled as draws from q (a plausible bug) are caught."""
    target, _ = memoised_pair(tiny_llama)
    drafter = memo_drafter(tiny_llama, budget=1, alpha=1e-6)
    honest = drafter.propose

    def argmax_as_sample(context):
        tree = honest(context)
        best = int(tree.q[0].argmax())
        return TokenTree.chain(context[-1], [best], Draw.IID, tree.q[:2])

    drafter.propose = argmax_as_sample
    with pytest.raises(AssertionError):
        assert_sampling_lossless(target, drafter, CONTEXT, Sampling(temperature=0.8, top_k=8, seed=0), trials=2000)


def test_lossy_decoder_is_the_fine_tuned_greedy_at_one_token_per_forward(tiny_llama):
    """decode_units with m = 1 is plain greedy decoding of the fine-tuned copy; with m = 3 and alpha ~ 0
    it emits 3 tokens per forward (the paper's mode: no verification, so the text may differ)."""
    drafter = make_drafter("lexical", tiny_llama, checkpoint="random")
    copy = Model("tiny-lora", drafter.lm.module, tiny_llama.tokenizer, tiny_llama.source, False)
    ar, forwards = decode_units(drafter.lm, CONTEXT, 24, set(), 0.9, 1)
    assert ar == Engine(copy).complete(CONTEXT, max_new_tokens=24).token_ids and forwards == 24
    units, forwards = decode_units(drafter.lm, CONTEXT, 24, set(), 1e-6, 3)
    assert len(units) == 24 and forwards == 8 and units[0] == ar[0]


def test_train_loss_goes_down_and_adapter_round_trips(tiny_llama, tiny_cache, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from clmkit.drafters.lexical import LexicalLoRA, adapter_key
    from clmkit.train.loop import TrainConfig, train

    torch.manual_seed(0)
    module = LexicalLoRA.for_target(tiny_llama, layers=2, alpha=0.2)  # a random model is rarely confident
    batch = tiny_cache.train_batch(8, 32, 0, 0)
    before = module.loss(batch)[1]
    assert before["pad_labels"] > 0
    weights = tmp_path / "lexical.safetensors"
    cfg = TrainConfig(steps=30, batch_size=8, length=32, lr=1e-2, warmup=3, eval_every=30, eval_batches=1)
    config = train(module, tiny_llama, tiny_cache, weights, cfg, "test", quiet=True)
    assert module.loss(batch)[1]["ce_pad"] < 0.5 * before["ce_pad"]  # the [PAD]s learned their unit tokens
    assert config["options"]["layers"] == 2 and len(config["eval"]["top1"]) == 3
    # The drafter merges exactly the saved (fp16) adapters: W + lora_alpha / r * B A, nothing else changes.
    drafter = make_drafter("lexical", tiny_llama, checkpoint=str(weights))
    scale = config["options"]["lora_alpha"] / config["options"]["rank"]
    for name in lora_targets(tiny_llama.module, 2):
        a = module.adapters[adapter_key(name)[len("adapters."):]]["A"].weight.detach()
        b = module.adapters[adapter_key(name)[len("adapters."):]]["B"].weight.detach()
        want = tiny_llama.module.get_submodule(name).weight + scale * b @ a
        assert torch.allclose(drafter.lm.module.get_submodule(name).weight, want, atol=2e-3), name
    assert torch.equal(drafter.lm.module.get_input_embeddings().weight, tiny_llama.module.get_input_embeddings().weight)
    assert_greedy_parity(tiny_llama, drafter, [7, 8, 9, 10, 7, 8], max_new_tokens=24)
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    ok = CliRunner().invoke(cli.app, ["generate", "hello world", "--no-chat", "-n", "8", "--drafter", "lexical",
                                      "--draft-checkpoint", str(weights), "--backend", "torch", "--json"])
    assert ok.exit_code == 0, ok.output
    # the lossy mode's evaluation: JSON with the three modes scored against the original's greedy output
    evaluated = CliRunner().invoke(cli.app, ["eval", "lexical", "--draft-checkpoint", str(weights), "-n", "6",
                                             "--alpha", "0.01", "-o", str(tmp_path / "eval"), "--cache", str(tiny_cache.folder)])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((tmp_path / "eval" / "lexical.json").read_text())
    assert [m["mode"] for m in result["summary"]] == ["lora-ar", "lud", "lossless"] and len(result["prompts"]) == 13
    lossless = [p["lossless"] for p in result["prompts"]]
    assert all(m["exact"] for m in lossless)  # verified by the original: identical to its greedy output
    assert result["summary"][1]["tokens/forward"] > 1 and result["units"]["response_tokens"] > 0


def test_bad_input_is_a_clear_error(tiny_models, tiny_llama, tmp_path):
    with pytest.raises(InputError, match="clm train lexical"):
        make_drafter("lexical", tiny_llama)  # no adapter ships for a test model
    with pytest.raises(InputError, match="alpha"):
        make_drafter("lexical", tiny_llama, checkpoint="random", alpha=1.5)
    with pytest.raises(InputError, match="budget"):
        make_drafter("lexical", tiny_llama, checkpoint="random", budget=0)
    with pytest.raises(InputError, match="not found"):
        make_drafter("lexical", tiny_llama, checkpoint=str(tmp_path / "missing.safetensors"))
    from clmkit.models import NoTorchWeights

    gguf_only = Model("llama.cpp-only", NoTorchWeights("x", "llama.cpp"), tiny_llama.tokenizer, tiny_llama.source, False)
    with pytest.raises(InputError, match="--backend torch"):
        LexicalDrafter(gguf_only, checkpoint="random")
    bad = CliRunner().invoke(cli.app, ["eval", "lexical", "--per-category", "0"])
    assert bad.exit_code == 2 and "--per-category" in bad.output


def test_adapter_for_another_model_is_refused(tiny_llama, tmp_path):
    """An adapter trained on another target (hidden size / vocabulary) names both models."""
    import json

    from safetensors.torch import save_file

    weights = tmp_path / "lexical.safetensors"
    save_file({"x": torch.zeros(1)}, str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"method": "lexical", "model": "smollm2-135m", "hidden_size": 576,
                                                        "vocab_size": 49152, "options": {}}))
    with pytest.raises(InputError, match="smollm2-135m"):
        make_drafter("lexical", tiny_llama, checkpoint=str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"method": "heads", "model": "x", "hidden_size": 64,
                                                        "vocab_size": 320, "options": {}}))
    with pytest.raises(InputError, match="not 'lexical'"):
        make_drafter("lexical", tiny_llama, checkpoint=str(weights))
