"""Trained drafters through the one verifier: greedy identical to plain decoding for any weights,
sampling distribution equal to the target's, the hidden-states hook, and the CLI. The shipped checkpoints on
the embedded model: tests/test_embedded.py (every registered drafter, greedy parity, drafts accepted)."""

import pytest
import torch
from typer.testing import CliRunner

from clmkit import cli
from clmkit.drafters import make_drafter
from clmkit.drafters._trained import depth_template
from clmkit.errors import InputError
from clmkit.sampling import Sampling
from clmkit.train import trainable
from clmkit.train.loop import TargetParts, TrainConfig, train
from clmkit.train import module_class
from clmkit.train.checkpoint import read_config
from tests.drafters.harness import assert_greedy_parity, assert_sampling_lossless, memoised_pair

METHODS = trainable()
PROMPTS = ([5, 6, 7, 8] * 3, [20, 21, 22, 9, 40, 41, 9, 40])


def test_every_trained_drafter_is_covered():
    assert {"heads", "fspad"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_greedy_identical_to_plain_random_weights(tiny_models, name, arch):
    """Parity holds for any draft weights: an untrained (random) module proposes junk, the target
    rejects it, the output is still plain decoding's. Wide trees (16 draft tokens) exercise branching."""
    model = tiny_models[arch]
    drafter = make_drafter(name, model, checkpoint="random", budget=16)
    for prompt in PROMPTS:
        out = assert_greedy_parity(model, drafter, prompt, max_new_tokens=32)
        assert out.stats.draft_tokens > 0


@pytest.mark.parametrize("name", [m for m in METHODS if m not in ("ppd", "lexical")])  # ppd: tests/train/test_ppd.py (its
def test_sampling_matches_target(tiny_llama, name):  # drafts come from the verify forward); lexical samples its drafts: test_lexical.py
    """4,000 verification steps on the memoised tiny Llama (harness.PathMemo, which also memoises the
    final hidden state of each path): committed tokens follow the target's distribution."""
    target, _ = memoised_pair(tiny_llama)
    drafter = propose_once(make_drafter(name, target, checkpoint="random", budget=8))
    context = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]
    assert_sampling_lossless(target, drafter, context, Sampling(temperature=0.8, top_k=40, seed=0), trials=4000)


def propose_once(drafter):
    """Trained drafters propose top-k trees: a deterministic function of the context and its features,
    identical in all 20,000 trials from one context. Compute it once (checked twice) so the test
    spends its time on verification, the part under test."""
    trees, original = {}, drafter.propose

    def propose(context):
        key = tuple(context)
        if key not in trees:
            trees[key] = original(context)
            drafter.begin(context[:-1], drafter.sampling)
            drafter.observe_prompt(drafter_features[0])
            again = original(context)
            assert torch.equal(again.tokens, trees[key].tokens) and torch.equal(again.parents, trees[key].parents)
        return trees[key]

    drafter_features = []
    observe_prompt = drafter.observe_prompt

    def remember(hidden):
        drafter_features[:] = [hidden]
        observe_prompt(hidden)

    drafter.observe_prompt, drafter.propose = remember, propose
    return drafter


def test_sampling_negative_control(tiny_llama):
    """The chi-square check can fail: a 'verifier' that accepts every depth-1 draft is caught."""
    from tests.drafters import harness

    target, _ = memoised_pair(tiny_llama)
    drafter = propose_once(make_drafter("heads", target, checkpoint="random", budget=4))
    original = harness.verify
    harness.verify = harness.accept_first_child
    try:
        with pytest.raises(AssertionError):
            assert_sampling_lossless(target, drafter, [5, 6, 7, 8, 5, 6, 7], Sampling(temperature=0.8, seed=0), trials=2000)
    finally:
        harness.verify = original


def test_drafter_without_hidden_states_is_a_clear_error(tiny_llama):
    drafter = make_drafter("heads", tiny_llama, checkpoint="random")
    drafter.begin([1, 2, 3], Sampling())
    with pytest.raises(InputError, match="hidden states"):
        drafter.propose([1, 2, 3, 4])
    with pytest.raises(InputError, match="torch backend"):
        drafter.observe(None, None, None)


def test_medusa_tree_follows_measured_rates():
    rates = [[0.6, 0.2, 0.1], [0.4, 0.1, 0.05]]
    template = depth_template(rates, 5)
    assert len(template) == 5 and template.depth == 2
    # path probabilities: (0) .6, (0,0) .24, (1) .2, (2) .1, (1,0) .08, (0,1) .06 -> the best four
    assert template.parents == [-1, 0, 0, 0, 1] and template.ranks == [-1, 0, 1, 2, 0]
    assert len(depth_template(rates, 7)) == 7  # then (1,0) and (0,1)


def test_cli_generate_with_draft_checkpoint(tiny_llama, tiny_cache, tmp_path, monkeypatch):
    weights = tmp_path / "heads.safetensors"
    module = module_class("heads")(TargetParts.of(tiny_llama.module))
    train(module, tiny_llama, tiny_cache, weights, TrainConfig(steps=2, eval_every=2, batch_size=4, length=16,
                                                                eval_batches=1), "test", quiet=True)
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    ok = CliRunner().invoke(cli.app, ["generate", "hello world", "--no-chat", "-n", "8", "--drafter", "heads",
                                      "--draft-checkpoint", str(weights), "--json"])
    assert ok.exit_code == 0, ok.output
    missing = CliRunner().invoke(cli.app, ["generate", "hello", "--no-chat", "-n", "4", "--drafter", "heads",
                                           "--draft-checkpoint", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 2 and "not found" in missing.output
    wrong = CliRunner().invoke(cli.app, ["generate", "hello", "--no-chat", "-n", "4", "--drafter", "fspad",
                                         "--draft-checkpoint", str(weights)])
    assert wrong.exit_code == 2 and "not 'fspad'" in wrong.output


def test_cli_train_bad_input_is_one_line(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    steps = CliRunner().invoke(cli.app, ["train", "heads", "--steps", "0"])
    assert steps.exit_code == 2 and "--steps" in steps.output
    cache = CliRunner().invoke(cli.app, ["train", "heads", "--cache", str(tmp_path / "none")])
    assert cache.exit_code == 2 and "no feature cache" in cache.output
    device = CliRunner().invoke(cli.app, ["train", "heads", "--device", "cuda", "--cache", str(tmp_path)])
    assert device.exit_code == 2 and ("CUDA" in device.output or "no feature cache" in device.output)


def test_cli_train_runs_and_resumes(tiny_llama, tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    out = tmp_path / "fspad.safetensors"
    args = ["train", "fspad", "--cache", str(tiny_cache.folder), "-o", str(out), "--steps", "6", "--eval-every", "3",
            "--batch-size", "4", "--length", "16"]
    first = CliRunner().invoke(cli.app, args + ["--until", "3"])
    assert first.exit_code == 0, first.output
    assert read_config(out)["step"] == 3 and "--until 3" in read_config(out)["command"]
    second = CliRunner().invoke(cli.app, args)
    assert second.exit_code == 0, second.output
    assert read_config(out)["step"] == 6
