"""`clm generate --drafter ...`: the options reach the drafter; bad drafter input is one clear line, exit 2."""

import json

import pytest
from typer.testing import CliRunner

from clmkit import cli
from clmkit.drafters import budget_options, make_drafter
from clmkit.errors import InputError

runner = CliRunner()


@pytest.fixture
def tiny_cli(tiny_llama, monkeypatch):
    monkeypatch.setattr("clmkit.models.load", lambda name, **backend: tiny_llama)
    return tiny_llama


def generate(*args):
    return runner.invoke(cli.app, ["generate", "hello world", "-n", "12", "--no-chat", "--json", *args])


@pytest.mark.parametrize("name", ["lookup", "recycling", "adaptive", "draft", "dyspec", "rsd"])
def test_generate_with_each_drafter_equals_plain(tiny_cli, name):
    plain = json.loads(generate().output.strip().splitlines()[-1])
    extra = ["--draft-model", "self:1"] if name in ("draft", "dyspec", "rsd") else []
    result = generate("--drafter", name, *extra)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["token_ids"] == plain["token_ids"]
    assert out["stats"]["target_forwards"] >= 1


@pytest.mark.parametrize("args,message", [
    (["--drafter", "nope"], "unknown drafter 'nope'"),
    (["--drafter", "recycling", "--tree-budget", "0"], "tree budget must be >= 1"),
    (["--drafter", "lookup", "--tree-budget", "-2"], "tree budget must be >= 1"),
    (["--drafter", "rsd", "--tree-budget", "4"], "no single tree budget"),
    (["--drafter", "lookup", "--draft-model", "self:1"], "--draft-model applies to"),
    (["--drafter", "lookup", "--recycling-state", "x.safetensors"], "--recycling-state applies"),
    (["--tree-budget", "4"], "need --drafter"),
    (["--drafter", "lookup", "-O", "nonsense"], "KEY=VALUE"),
    (["--drafter", "lookup", "-O", "colour=blue"], "unexpected keyword argument 'colour'"),
    (["--drafter", "draft", "--draft-model", "self:abc"], "self-draft takes a layer count"),
    (["--drafter", "draft", "--draft-model", "self:99"], "self:N needs 1 <= N"),
    (["--drafter", "draft", "--draft-model", "/no/such/model"], "no/such/model"),
])
def test_bad_drafter_flags_are_clear_errors(tiny_cli, args, message):
    result = generate(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_corrupt_recycling_state_is_a_clear_error_and_is_not_overwritten(tiny_cli, tmp_path):
    state = tmp_path / "state.safetensors"
    state.write_bytes(b"not a safetensors file at all")
    result = generate("--drafter", "recycling", "--recycling-state", str(state))
    assert result.exit_code == 2 and "corrupt" in result.output
    assert state.read_bytes() == b"not a safetensors file at all"


def test_recycling_state_saved_then_hot_started(tiny_cli, tmp_path):
    state = tmp_path / "state.safetensors"
    assert generate("--drafter", "recycling", "--recycling-state", str(state)).exit_code == 0
    assert state.is_file()
    saved = make_drafter("recycling", tiny_cli, state=state)
    assert int(saved.candidates.abs().sum()) > 0  # learned rows, not the cold all-zero matrix
    assert generate("--drafter", "recycling", "--recycling-state", str(state)).exit_code == 0


def test_tree_budget_means_draft_tokens_for_every_drafter(tiny_llama):
    for name in ("lookup", "recycling", "adaptive", "draft", "dyspec"):
        options = budget_options(name, 5)
        if name in ("draft", "dyspec"):
            options["draft_model"] = "self:1"
        assert make_drafter(name, tiny_llama, **options).max_nodes == 6, name
    with pytest.raises(InputError):
        budget_options("nope", 3)


@pytest.mark.parametrize("args, message", [
    (["-c", "poetry"], "unknown Spec-Bench category poetry"),
    (["--methods", "vanilla,nope"], "unknown method(s) nope"),
    (["--methods", "vanilla", "-O", "lookup.max_nodes=3"], "METHOD.KEY=VALUE for one of the methods run"),
])
def test_bench_speed_bad_flags_are_clear_errors(tiny_llama, monkeypatch, args, message):
    monkeypatch.setattr("clmkit.bench.speed.load", lambda name: tiny_llama)
    result = runner.invoke(cli.app, ["bench", "speed", "--per-category", "1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
