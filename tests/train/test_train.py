"""The training substrate on a tiny random model: self-distilled data -> feature cache -> loop ->
checkpoint that loads into the drafter; resume; wrong-model checkpoints; data exclusion."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from clmkit.drafters import make_drafter
from clmkit.errors import InputError
from clmkit.train import module_class
from clmkit.train.checkpoint import read_config
from clmkit.train.features import FeatureCache
from clmkit.train.loop import TargetParts, TrainConfig, train
from tests.drafters.harness import assert_greedy_parity

def fresh(name, model, **options):
    torch.manual_seed(0)
    return module_class(name)(TargetParts.of(model.module), **options)


CFG = dict(batch_size=8, length=32, lr=3e-3, warmup=5, eval_every=20, eval_batches=2)


@pytest.mark.parametrize("name,lr", [("heads", 3e-2), ("fspad", 3e-3)])
def test_loss_goes_down_and_checkpoint_round_trips(tiny_llama, tiny_cache, tmp_path, name, lr):
    weights = tmp_path / f"{name}.safetensors"
    cfg = TrainConfig(steps=40, **{**CFG, "lr": lr})
    config = train(fresh(name, tiny_llama), tiny_llama, tiny_cache, weights, cfg, "test", quiet=True)
    curves = json.loads(weights.with_suffix(".curves.json").read_text())
    first, last = sum(curves["loss"][:10]) / 10, sum(curves["loss"][-10:]) / 10
    assert last < 0.85 * first, (first, last)
    assert weights.with_suffix(".curves.png").stat().st_size > 0
    assert config["command"] == "test" and config["tokens_seen"] > 0 and len(config["rank_probs"]) >= 1
    # The drafter loads exactly the saved (fp16) weights, and stays lossless with them.
    drafter = make_drafter(name, tiny_llama, checkpoint=str(weights))
    saved = load_file(str(weights))
    for key, value in drafter.module.state_dict().items():
        assert torch.equal(value, saved[key].float()), key
    assert_greedy_parity(tiny_llama, drafter, [7, 8, 9, 10, 7, 8], max_new_tokens=32)


def test_resume_continues_the_same_run(tiny_llama, tiny_cache, tmp_path):
    cfg = TrainConfig(steps=30, **CFG)
    straight = tmp_path / "a" / "heads.safetensors"
    train(fresh("heads", tiny_llama), tiny_llama, tiny_cache, straight, cfg, "test", quiet=True)
    interrupted = tmp_path / "b" / "heads.safetensors"
    train(fresh("heads", tiny_llama), tiny_llama, tiny_cache, interrupted, cfg, "test", quiet=True, until=15)
    assert read_config(interrupted)["step"] == 15
    train(fresh("heads", tiny_llama), tiny_llama, tiny_cache, interrupted, cfg, "test", quiet=True)  # resumes at 20
    a, b = load_file(str(straight)), load_file(str(interrupted))
    assert read_config(interrupted)["step"] == 30
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3), key


def test_checkpoint_for_another_model_is_a_clear_error(tiny_models, tiny_llama, tiny_cache, tmp_path):
    weights = tmp_path / "heads.safetensors"
    train(fresh("heads", tiny_llama), tiny_llama, tiny_cache, weights, TrainConfig(steps=1, **CFG), "test", quiet=True)
    from tests.conftest import make_module
    from clmkit.models import Model

    wider = Model("tiny-wide", make_module("llama", len(tiny_llama.tokenizer), hidden_size=96), tiny_llama.tokenizer,
                  tiny_llama.source, False)
    with pytest.raises(InputError, match="hidden size 64"):
        make_drafter("heads", wider, checkpoint=str(weights))
    with pytest.raises(InputError, match="feature cache"):
        tiny_cache.check_model(wider)
    with pytest.raises(InputError, match="not 'fspad'"):
        make_drafter("fspad", tiny_llama, checkpoint=str(weights))
    with pytest.raises(InputError, match="not found"):
        make_drafter("heads", tiny_llama, checkpoint=str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match="no 'heads' checkpoint ships"):
        make_drafter("heads", tiny_llama)


def test_half_written_cache_is_never_read(tiny_llama, tiny_cache, tmp_path):
    broken = tmp_path / "features"
    shutil.copytree(tiny_cache.folder, broken)
    (broken / "meta.json").unlink()  # what a crash before the final rename would leave
    with pytest.raises(InputError, match="no feature cache"):
        FeatureCache(broken)


def test_training_prompts_exclude_the_benchmark_sample():
    try:
        from clmkit.bench.specbench import load_specbench
        from clmkit.train.data import HELD_OUT_PER_CATEGORY, prompt_texts

        bench = {p.text for p in load_specbench(HELD_OUT_PER_CATEGORY)}
        train_texts = set(prompt_texts("specbench"))
        others = {source: prompt_texts(source) for source in ("gsm8k", "humaneval", "mbpp")}  # not bundled
    except FileNotFoundError:
        pytest.skip("benchmark data absent: set CLMKIT_DATA to the shared data folder")
    assert train_texts and not bench & train_texts
    assert len(others["gsm8k"]) > 1000 and others["humaneval"] and others["mbpp"]
