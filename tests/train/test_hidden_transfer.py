"""hidden-transfer (clmkit/drafters/hidden_transfer.py): the upper layers it runs are the target's own
computation, its incremental drafting cache agrees with a from-scratch forward, the feature cache gains
the transfer layer compatibly, training lowers the loss and the checkpoint round-trips, bad checkpoints
and wrong models are clear errors. Greedy parity on llama / qwen2 / gpt2 and the sampling chi-square
(+ negative control) run for every trained drafter in test_trained_drafters.py."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from clmkit import cli
from clmkit.cache import KVCache
from clmkit.drafters import make_drafter
from clmkit.drafters.hidden_transfer import UpperLayers
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.hf_adapter import num_layers
from clmkit.models import Model
from clmkit.sampling import Sampling
from clmkit.train import module_class
from clmkit.train.features import FeatureCache
from clmkit.train.loop import TargetParts, TrainConfig, train
from tests.conftest import make_module
from tests.drafters.harness import assert_greedy_parity

NAME = "hidden-transfer"


def causal(rows: int, past: int = 0) -> torch.Tensor:
    mask = torch.ones(1, 1, rows, past + rows, dtype=torch.bool)
    mask[0, 0, :, past:] = torch.ones(rows, rows, dtype=torch.bool).tril()
    return mask


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_upper_layers_are_the_targets_own(tiny_models, arch):
    """Layer-1 states through the upper view (in two cached chunks) give the target's final states."""
    module = tiny_models[arch].module
    ids = torch.randint(5, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = module(input_ids=ids, output_hidden_states=True).hidden_states
        upper, cache = UpperLayers(module, 1), KVCache(num_layers(module), 4)
        a = upper(want[1][:, :7], torch.arange(7)[None], causal(7), cache)
        b = upper(want[1][:, 7:], torch.arange(7, 12)[None], causal(5, 7), cache)
    assert torch.allclose(torch.cat([a, b], 1), want[-1], atol=1e-5)


def test_incremental_drafting_matches_a_fresh_forward(tiny_llama):
    """The drafter's own KV cache of the upper layers (fed a few committed rows per step, pseudo rows
    dropped) gives the same pseudo logits as a fresh drafter that sees the whole context at once."""
    drafter = make_drafter(NAME, tiny_llama, checkpoint="random", budget=8)
    drafter.module.parts.head_bf16 = None  # fp32 logits: compare the arithmetic, not bf16 rounding
    torch.manual_seed(1)
    for p in drafter.module.parameters():  # non-zero transfer maps: pseudo rows differ from copies
        p.data.normal_(0, 0.05)
    seen = []
    original = drafter.pseudo_logits

    def record(context, features):
        out = original(context, features)
        seen.append((list(context), out))
        return out

    drafter.pseudo_logits = record
    Engine(tiny_llama, drafter=drafter).complete([5, 6, 7, 8, 9], max_new_tokens=24)
    assert len(seen) > 5
    fresh = make_drafter(NAME, tiny_llama, checkpoint="random", budget=8)
    fresh.module.load_state_dict(drafter.module.state_dict())
    fresh.module.parts.head_bf16 = None
    for context, logits in seen[-3:]:
        with torch.inference_mode():
            states = tiny_llama.module(input_ids=torch.tensor([context[:-1]]), output_hidden_states=True).hidden_states
            fresh.begin(context[:-1], Sampling())
            fresh.observe_prompt(states[fresh.hidden_layer][0])
            assert torch.allclose(fresh.pseudo_logits(context, fresh.features), logits, atol=1e-4)


def test_trains_from_the_extended_cache_and_round_trips(tiny_llama, tiny_cache, tmp_path):
    weights = tmp_path / "hidden-transfer.safetensors"
    torch.manual_seed(0)
    module = module_class(NAME)(TargetParts.of(tiny_llama.module), anchors=8)
    cfg = TrainConfig(steps=60, batch_size=8, length=24, lr=6e-2, warmup=3, eval_every=60, eval_batches=1)
    config = train(module, tiny_llama, tiny_cache, weights, cfg, "test", quiet=True)
    # The cache gained the transfer layer's states, once, beside the untouched final-layer ones.
    assert FeatureCache(tiny_cache.folder).meta["layers"] == [1]
    with torch.inference_mode():
        offset, _, length = tiny_cache.meta["sequences"][0]
        ids = tiny_cache.tokens[offset:offset + length].tolist()
        want = tiny_llama.module(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
    assert np.allclose(tiny_cache.mid[offset:offset + length], want.numpy(), atol=2e-2)
    curves = json.loads(weights.with_suffix(".curves.json").read_text())
    first, last = sum(curves["loss"][:8]) / 8, sum(curves["loss"][-8:]) / 8
    assert last < 0.85 * first, (first, last)
    assert config["options"]["layer"] == 1 and len(config["rank_probs"]) == 3
    drafter = make_drafter(NAME, tiny_llama, checkpoint=str(weights))
    saved = load_file(str(weights))
    assert set(saved) == {"transfer", "token", "bias"}  # the target's weights are never saved
    for key, value in drafter.module.state_dict().items():
        assert torch.equal(value, saved[key].float()), key
    assert_greedy_parity(tiny_llama, drafter, [7, 8, 9, 10, 7, 8], max_new_tokens=24)

    # Bad checkpoints and wrong targets: one clear InputError each.
    wider = Model("tiny-wide", make_module("llama", len(tiny_llama.tokenizer), hidden_size=96), tiny_llama.tokenizer,
                  tiny_llama.source, False)
    with pytest.raises(InputError, match="hidden size 64"):
        make_drafter(NAME, wider, checkpoint=str(weights))
    shallow = Model("tiny-1layer", make_module("llama", len(tiny_llama.tokenizer), num_hidden_layers=1),
                    tiny_llama.tokenizer, tiny_llama.source, False)
    with pytest.raises(InputError, match="at least 2 decoder layers"):
        make_drafter(NAME, shallow, checkpoint=str(weights))
    with pytest.raises(InputError, match="not found"):
        make_drafter(NAME, tiny_llama, checkpoint=str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match=f"no '{NAME}' checkpoint ships"):
        make_drafter(NAME, tiny_llama)
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="corrupt"):
        make_drafter(NAME, tiny_llama, checkpoint=str(weights))
    weights.with_suffix(".json").write_text("{truncated")
    with pytest.raises(InputError, match="not valid JSON"):
        make_drafter(NAME, tiny_llama, checkpoint=str(weights))


def test_bad_options_and_cli_errors(tiny_llama, tiny_cache, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="layer must be in 1..1"):
        make_drafter(NAME, tiny_llama, checkpoint="random", layer=2)
    with pytest.raises(InputError, match="positions must be"):
        make_drafter(NAME, tiny_llama, checkpoint="random", positions=0)
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    bad = tmp_path / "ht.safetensors"
    bad.write_bytes(b"not a checkpoint")
    bad.with_suffix(".json").write_text(json.dumps({"method": NAME, "model": "tiny", "hidden_size": 64,
                                                    "vocab_size": tiny_llama.vocab_size, "options": {"layer": 1}}))
    run = CliRunner().invoke(cli.app, ["generate", "hello", "--no-chat", "-n", "4", "--drafter", NAME,
                                       "--draft-checkpoint", str(bad)])
    assert run.exit_code == 2 and "corrupt" in run.output and len(run.output.strip().splitlines()) == 1
    layer = CliRunner().invoke(cli.app, ["train", NAME, "--cache", str(tiny_cache.folder), "-o", str(tmp_path / "x.safetensors"),
                                         "-O", "layer=7", "--steps", "1"])
    assert layer.exit_code == 2 and "layer must be in 1..1" in layer.output


def test_sampling_negative_control_hidden_transfer(tiny_llama):
    """The chi-square check of test_trained_drafters.py catches a lossy verifier with this drafter's
    trees too (a 'verifier' that accepts every depth-1 draft): its first tokens fail the test."""
    from clmkit.sampling import target_probs
    from tests.drafters import harness
    from tests.stats import ALPHA, chisquare_pvalue
    from tests.train.test_trained_drafters import propose_once

    target, _ = harness.memoised_pair(tiny_llama)
    drafter = propose_once(make_drafter(NAME, target, checkpoint="random", budget=4))
    context, sampling = [5, 6, 7, 8, 5, 6, 7], Sampling(temperature=0.8, seed=0)
    original = harness.verify
    harness.verify = harness.accept_first_child
    try:
        first, _ = harness.step_samples(target, drafter, context, sampling, trials=2000)
    finally:
        harness.verify = original
    with torch.inference_mode():
        p1 = target_probs(tiny_llama.module(input_ids=torch.tensor([context])).logits[0, -1], sampling)
    assert first[p1 == 0].sum() > 0 or chisquare_pvalue(first[p1 > 0], p1[p1 > 0]) < ALPHA


def test_training_sees_what_drafting_sees(tiny_llama, tiny_cache):
    """The teacher-forced pass (every anchor of a window at once, one masked forward) gives each anchor
    the pseudo logits the drafter computes from that prefix alone: training and inference agree."""
    drafter = make_drafter(NAME, tiny_llama, checkpoint="random", budget=8)
    torch.manual_seed(2)
    for p in drafter.module.parameters():
        p.data.normal_(0, 0.05)
    m = drafter.module
    m.parts.head_bf16 = None
    tiny_cache.use_layer(tiny_llama, m.feature_layer)
    batch = tiny_cache.eval_batches(2, 16)[0]
    anchors = torch.tensor([2, 9, 14])
    with torch.inference_mode():
        taught = m.parts.logits(m.teacher(batch, anchors))  # [B, S, K, vocab]
        for b in range(2):
            for s, a in enumerate(anchors.tolist()):
                drafter.begin([], Sampling())
                drafter.observe_prompt(batch.mid[b, :a + 1])
                drafted = drafter.pseudo_logits(batch.tokens[b, :a + 2].tolist(), drafter.features)
                assert torch.allclose(taught[b, s], drafted, atol=1e-3), (b, a)
