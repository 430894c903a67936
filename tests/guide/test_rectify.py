"""Value-guided rectification: masking by the value head's risk, drafters unchanged, training end to end."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from clmkit import cli
from clmkit.backends import make_backend
from clmkit.drafters import budget_options, make_drafter
from clmkit.engine import Engine
from clmkit.errors import InputError
from clmkit.guide import make_guide
from clmkit.guide.rectify import ValueHead, WordList


def risky_head(model, token: int) -> ValueHead:
    """A head whose risk is ~sigmoid(10 cos-like(e_a, e_token) - 5): high for `token`, low for most others."""
    emb = model.module.get_output_embeddings().weight.detach()
    head = ValueHead(emb.shape[1], rank=4)
    with torch.no_grad():
        head.state.weight.zero_()
        head.state.bias.fill_(1.0)
        head.token.weight.zero_()
        head.token.weight[0] = 10 * emb[token] / emb[token].norm() ** 2
        head.bias.fill_(-5.0)
    return head


def test_masks_tokens_above_the_threshold(tiny_llama):
    prompt = [5, 6, 7, 8]
    plain = Engine(tiny_llama).complete(prompt, max_new_tokens=1).token_ids[0]
    guide = make_guide("rectify", tiny_llama, head=risky_head(tiny_llama, plain), threshold=0.9)
    out = Engine(tiny_llama).complete(prompt, max_new_tokens=8, guide=guide)
    assert out.token_ids[0] != plain and plain not in out.token_ids
    assert guide.steps > 0 and guide.masked_mass > 0  # the shift from the LM is measured


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN kernels need a torch build with mkldnn")
def test_rectify_reads_the_hidden_states_of_the_kernel_that_runs(tiny_llama):
    """With the oneDNN kernel the backend runs a copy of the module: the guide must watch that copy's LM head."""
    prompt = [5, 6, 7, 8]
    plain = Engine(tiny_llama).complete(prompt, max_new_tokens=1).token_ids[0]
    outputs = []
    for kernel in ("onednn", "hf"):
        model = dataclasses.replace(tiny_llama, backend=make_backend("torch", tiny_llama.module, kernel=kernel))
        guide = make_guide("rectify", model, head=risky_head(model, plain), threshold=0.9)
        outputs.append(Engine(model).complete(prompt, max_new_tokens=8, guide=guide).token_ids)
        assert guide.steps > 0 and guide.masked_mass > 0
    assert outputs[0] == outputs[1] and plain not in outputs[1]


@pytest.mark.parametrize("name", ["lookup", "recycling"])
def test_drafters_token_identical_under_rectification(tiny_llama, name):
    prompt = [5, 6, 7, 8] * 4
    first = Engine(tiny_llama).complete(prompt, max_new_tokens=1).token_ids[0]
    guide = make_guide("rectify", tiny_llama, head=risky_head(tiny_llama, first), threshold=0.9)
    plain = Engine(tiny_llama).complete(prompt, max_new_tokens=40, guide=guide)
    drafter = make_drafter(name, tiny_llama, **budget_options(name, 8))
    fast = Engine(tiny_llama).complete(prompt, max_new_tokens=40, guide=guide, drafter=drafter)
    assert fast.token_ids == plain.token_ids


def test_bad_rectifier_input(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="needs a trained value head"):
        make_guide("rectify", tiny_llama)
    with pytest.raises(InputError, match="not a rectifier"):
        make_guide("rectify", tiny_llama, path=tmp_path)
    with pytest.raises(InputError, match="threshold"):
        make_guide("rectify", tiny_llama, head=risky_head(tiny_llama, 5), threshold=1.5)
    with pytest.raises(InputError, match="empty"):
        WordList(["", " "])


def test_word_list_detector():
    detect = WordList(["darn", "heck"])
    assert detect(["Oh DARN it", "darning socks", "what the heck!"]) == [1.0, 0.0, 1.0]


def test_train_rectifier_cli_then_generate(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    words = tmp_path / "words.txt"
    words.write_text("the\nfox\ndog\nhello\n")
    out = tmp_path / "head"
    runner = CliRunner()
    r = runner.invoke(cli.app, ["guide", "train-rectifier", "--rollouts", "2", "-n", "8", "--epochs", "30",
                                "--words", str(words), "-o", str(out)])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    losses = json.loads((out / "loss.json").read_text())["loss"]
    assert config["rollouts"] > 0 and (out / "head.safetensors").is_file() and losses[-1] < losses[0]
    r = runner.invoke(cli.app, ["generate", "hello", "--no-chat", "-n", "6", "--json", "--rectifier", str(out)])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output.strip().splitlines()[-1])["token_ids"]) >= 1


def test_wilson_interval():
    from clmkit.guide.bench.rectify import wilson

    low, high = wilson(0, 10)
    assert low == 0 and abs(high - 0.2775) < 1e-3
    low, high = wilson(5, 10)
    assert abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3


def test_rectify_bench_same_seeds_and_masking(tiny_llama, tmp_path):
    """The batched bench: plain and rectified rows share seeds; the token the head forbids shows up in
    plain samples but never in rectified ones."""
    from clmkit.guide.bench.rectify import PROMPT_SETS, run_rectify_bench
    from clmkit.guide.rectify import save_head

    words = tmp_path / "words.txt"
    words.write_text("the\n")
    the = tiny_llama.tokenizer.convert_tokens_to_ids("the")
    save_head(risky_head(tiny_llama, the), tmp_path / "head", {"threshold": 0.9})
    result = run_rectify_bench(Engine(tiny_llama), tmp_path / "head", 6, 12, tmp_path / "out", "test", words=words,
                               style="continuation")
    rows = result["rows"]
    n = 6 * len(PROMPT_SETS["continuation"][1])
    assert len(rows) == 2 * n and result["summary"]["plain"]["samples"] == n
    assert [r["seed"] for r in rows if r["method"] == "plain"] == [r["seed"] for r in rows if r["method"] == "rectified"]
    has_the = [the in tiny_llama.tokenizer(r["text"])["input_ids"] for r in rows]
    assert any(h for h, r in zip(has_the, rows) if r["method"] == "plain")
    assert not any(h for h, r in zip(has_the, rows) if r["method"] == "rectified")
    assert result["summary"]["rectified"]["masked_mass_per_step"] > 0
    assert (tmp_path / "out" / "rectify.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["bench", "rectify", "--rectifier", "x", "--prompts", "nope"], "--prompts takes one of"),
    (["guide", "train-rectifier", "--prompts", "nope"], "--prompts takes one of"),
    (["bench", "momentum", "--batch", "0"], "--batch must be >= 1"),
])
def test_bench_flags_fail_cleanly(tiny_llama, monkeypatch, args, message):
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
