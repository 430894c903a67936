"""Marked tests on the real embedded model (SmolLM2-135M-Instruct). Run with the rest by `make test`."""

import json

import pytest
import torch
from typer.testing import CliRunner

from clmkit import cli
from clmkit.bench.specbench import load_specbench
from clmkit.engine import Engine

pytestmark = pytest.mark.embedded


def test_converted_copy_round_trips_the_gguf(embedded_model):
    """The cached safetensors copy gives the same logits as loading the GGUF directly."""
    from clmkit.models import EMBEDDED, load_gguf

    direct, _ = load_gguf(EMBEDDED["smollm2-135m"].locate())
    ids = torch.tensor([embedded_model.tokenizer("The capital of France is")["input_ids"]])
    with torch.inference_mode():
        want = direct(input_ids=ids).logits
        got = embedded_model.module(input_ids=ids).logits
    assert torch.equal(got, want)


def test_greedy_identical_to_hf_generate_on_specbench(embedded_model):
    engine = Engine(embedded_model)
    prompts = load_specbench(per_category=1)[:5]
    for p in prompts:
        ids = engine.encode(p.text)
        x = torch.tensor([ids])
        with torch.inference_mode():
            hf = embedded_model.module.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=48, do_sample=False)
        assert engine.complete(ids, max_new_tokens=48).token_ids == hf[0, len(ids):].tolist(), p.category


def test_cli_generate_json(embedded_model, monkeypatch):
    monkeypatch.setattr("clmkit.models.load", lambda name: embedded_model)
    result = CliRunner().invoke(cli.app, ["generate", "What is 2+2? Answer with a number.", "-n", "16", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["text"] and out["token_ids"] and out["stats"]["prompt_tokens"] > 0
    assert {"ttft_s", "decode_tokens_per_s", "new_tokens"} <= set(out["stats"])
