"""Bad input gets a clear error (ClmkitError in the API, one line + exit 2 in the CLI) and loses nothing."""

import numpy as np
import pytest
from typer.testing import CliRunner

from clmkit import cli
from clmkit.engine import Chunk, Engine, Stats
from clmkit.errors import InputError, ModelLoadError
from clmkit.models import load, load_gguf

runner = CliRunner()


def test_empty_prompt(tiny_llama):
    for prompt in ("", "   \n", []):
        with pytest.raises(InputError, match="empty"):
            Engine(tiny_llama).complete(prompt)


def test_prompt_longer_than_context_states_both_lengths(tiny_llama):
    ids = [5] * 300  # tiny model context: 256
    with pytest.raises(InputError, match=r"300 tokens.*context of 256"):
        Engine(tiny_llama).complete(ids, max_new_tokens=4)


def test_truncate_keeps_the_last_tokens(tiny_llama):
    ids = list(range(1, 301))
    out = Engine(tiny_llama).complete(ids, max_new_tokens=16, truncate=True, ignore_eos=True)
    assert out.stats.prompt_tokens == 256 - 16 and len(out.token_ids) == 16


@pytest.mark.parametrize("n", [0, -3])
def test_max_new_tokens_must_be_positive(tiny_llama, n):
    with pytest.raises(InputError, match="max_new_tokens"):
        Engine(tiny_llama).complete([5], max_new_tokens=n)


def test_out_of_vocab_ids(tiny_llama):
    with pytest.raises(InputError, match="token ids"):
        Engine(tiny_llama).complete([10**6])


def test_sampling_object_and_loose_arguments_conflict(tiny_llama):
    from clmkit.sampling import Sampling

    with pytest.raises(InputError):
        Engine(tiny_llama).complete([5], sampling=Sampling(), temperature=1.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "hi", "--top-p", "0"], "top-p"),
        (["generate", "hi", "--top-p", "1.5"], "top-p"),
        (["generate", "hi", "--temperature", "-1"], "temperature"),
        (["generate", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
        (["generate", "hi", "--max-new-tokens", "-5"], "max-new-tokens"),
        (["generate", "hi", "--model", "no-such-model"], "unknown model"),
        (["generate"], "exactly one"),
    ],
)
def test_cli_bad_values(args, message):
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_non_utf8_prompt_file(tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"hello \xff\xfe world")
    result = runner.invoke(cli.app, ["generate", "--prompt-file", str(bad)])
    assert result.exit_code == 2 and "not UTF-8" in result.output and "offset 6" in result.output


def test_cli_ctrl_c_keeps_partial_text(monkeypatch, tiny_llama):
    def interrupted(self, prompt, **kwargs):
        yield Chunk([1], "partial ", Stats(prompt_tokens=1, new_tokens=1))
        yield Chunk([2], "answer", Stats(prompt_tokens=1, new_tokens=2))
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", lambda name, **backend: tiny_llama, raising=False)
    monkeypatch.setattr("clmkit.models.load", lambda name, **backend: tiny_llama)
    monkeypatch.setattr(Engine, "generate", interrupted)
    result = runner.invoke(cli.app, ["generate", "hi"])
    assert result.exit_code == 130
    assert "partial answer" in result.output and "interrupted" in result.output
    result = runner.invoke(cli.app, ["generate", "hi", "--json"])
    assert result.exit_code == 130 and '"text": "partial answer"' in result.output and '"finish_reason": "interrupted"' in result.output


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load(str(tmp_path / "missing.gguf"))
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"this is not a gguf file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_gguf(corrupt)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load(str(empty_dir))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not load"):
        load(str(broken))


def test_gguf_with_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "rwkv.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv6")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="cannot load this GGUF's architecture.*rwkv6"):
        load_gguf(path)


def test_unwritable_cache_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("CLMKIT_CACHE", str(blocker / "cache"))  # a path under a file cannot be created
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="not writable.*CLMKIT_CACHE"):
        load(str(gguf_file))
