"""`clm generate` guide flags: constrained output, drafters unchanged, bad combinations = one line, exit 2."""

import json

import pytest
from typer.testing import CliRunner

from clmkit import cli

runner = CliRunner()


@pytest.fixture
def tiny_cli(tiny_llama, monkeypatch):
    monkeypatch.setattr("clmkit.models.load", lambda name, **options: tiny_llama)
    return tiny_llama


def generate(*args):
    return runner.invoke(cli.app, ["generate", "hello world", "-n", "40", "--no-chat", "--json", *args])


def last_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_json_schema_with_and_without_drafter(tiny_cli, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                                  "additionalProperties": False}))
    plain = last_json(generate("--json-schema", str(schema)))
    assert json.loads(plain["text"]) in ({"ok": True}, {"ok": False}) and plain["finish_reason"] == "stop"
    assert plain["incomplete"] is False
    fast = last_json(generate("--json-schema", str(schema), "--drafter", "lookup"))
    assert fast["token_ids"] == plain["token_ids"]


def test_choice_regex_momentum_and_samples(tiny_cli):
    assert last_json(generate("--choice", "yes", "--choice", "no"))["text"] in ("yes", "no")
    assert last_json(generate("--regex", "[0-9]{3}"))["text"].isdigit()
    assert last_json(generate("--decoding", "momentum", "--drafter", "recycling"))["token_ids"] == \
        last_json(generate("--decoding", "momentum"))["token_ids"]
    out = last_json(generate("--choice", "yes", "--choice", "no", "--aligned", "--samples", "3", "-t", "1", "--seed", "1"))
    assert len(out["samples"]) == 3 and all(s["text"] in ("yes", "no") for s in out["samples"])


def test_incomplete_output_is_flagged(tiny_cli):
    out = last_json(runner.invoke(cli.app, ["generate", "hi", "-n", "3", "--no-chat", "--json", "--regex", "(abc){9}"]))
    assert out["finish_reason"] == "length" and out["incomplete"] is True


@pytest.mark.parametrize("args,message", [
    (["--aligned"], "--aligned needs a grammar"),
    (["--choice", "a", "--aligned"], "--temperature > 0"),
    (["--regex", "[a-"], "invalid regex"),
    (["--regex", "a", "--choice", "b"], "give one of"),
    (["--decoding", "momentum", "-t", "0.8"], "greedy"),
    (["--decoding", "momentum", "--regex", "a"], "cannot be combined"),
    (["--decoding", "beam"], "--decoding takes one of"),
    (["--json-schema", "/nonexistent.json"], "not found"),
    (["--samples", "0"], "--samples must be >= 1"),
])
def test_bad_guide_flags(tiny_cli, args, message):
    result = generate(*args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
