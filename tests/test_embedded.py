"""Marked tests on the real embedded model (SmolLM2-135M-Instruct). Run with the rest by `make test`."""

import json

import pytest
import torch
from typer.testing import CliRunner

from clmkit import cli
from clmkit.bench.specbench import load_specbench
from clmkit.drafters import available, make_drafter
from clmkit.engine import Engine
from clmkit.parity import first_divergence

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
    monkeypatch.setattr("clmkit.models.load", lambda name, **backend: embedded_model)
    result = CliRunner().invoke(cli.app, ["generate", "What is 2+2? Answer with a number.", "-n", "16", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["text"] and out["token_ids"] and out["stats"]["prompt_tokens"] > 0
    assert {"ttft_s", "decode_tokens_per_s", "new_tokens"} <= set(out["stats"])


@pytest.mark.parametrize("name", available())
def test_every_drafter_greedy_identical_on_specbench(embedded_model, name):
    """Issue 3's parity on the real model: each drafter (default options; draft-model drafters use
    the self-draft) against clmkit plain greedy; divergences only at reported near-ties."""
    engine = Engine(embedded_model)
    # ppd sizes its tree from this machine's measured verify cost; under a test run's load that can be
    # a 1-node plan (no drafts), so parity is checked at a fixed 4-node budget
    drafter = make_drafter(name, embedded_model, **({"budget": 4} if name == "ppd" else {}))
    accepted = 0
    for p in load_specbench(per_category=1)[:3]:
        ids = engine.encode(p.text)
        plain = engine.complete(ids, max_new_tokens=48).token_ids
        fast = engine.complete(ids, max_new_tokens=48, drafter=drafter)
        d = first_divergence(embedded_model.module, ids, plain, fast.token_ids)
        if d is not None:
            print(f"[parity] {name} on {p.category}: {d}")
            assert d.near_tie, str(d)
        accepted += fast.stats.accepted_tokens
    assert accepted > 0


def test_eval_causal_runs_the_embedded_model(embedded_model, monkeypatch, tmp_path):
    monkeypatch.setattr("clmkit.models.load", lambda name, **backend: embedded_model)
    # axiomatic items are generated, so this runs in a fresh clone too (no CLMKIT_DATA needed)
    result = CliRunner().invoke(cli.app, ["eval", "causal", "--task", "axiomatic", "--strategy", "direct",
                                          "--limit", "2", "--drafter", "lookup", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert len(rows) == 2 and all("score" in r for r in rows)
