"""Bad input to the backend seam: one clear error each (CLI: one line, exit 2)."""

import sys

import pytest
from typer.testing import CliRunner

from clmkit import cli
from clmkit.backends import make_backend
from clmkit.errors import InputError, ModelLoadError
from clmkit.models import load, resolve_backend


@pytest.fixture
def no_llama_cpp(monkeypatch):
    """Simulate a machine without llama-cpp-python: `import llama_cpp` raises ImportError."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)


def test_llamacpp_backend_without_the_package_names_the_install_command(no_llama_cpp, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelLoadError, match=r"llama-cpp-python==0\.3\.36.*(make setup)"):
        load(str(gguf), backend="llama.cpp")
    assert resolve_backend(str(gguf), "auto") == "torch"  # auto falls back quietly
    result = CliRunner().invoke(cli.app, ["generate", "--model", str(gguf), "--backend", "llama.cpp", "hi"])
    assert result.exit_code == 2
    assert "pip install" in result.output and "Traceback" not in result.output


def test_unknown_backend_and_kernel(tiny_llama):
    with pytest.raises(InputError, match="unknown backend"):
        load("smollm2-135m", backend="vllm")
    with pytest.raises(InputError, match="unknown torch kernel"):
        make_backend("torch", tiny_llama.module, kernel="turbo")
    result = CliRunner().invoke(cli.app, ["generate", "--backend", "tpu", "hi"])
    assert result.exit_code == 2 and "unknown backend" in result.output


def test_hf_directory_given_to_llamacpp(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="runs GGUF files"):
        load(str(tmp_path), backend="llama.cpp")


def test_gguf_llamacpp_cannot_load(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)  # right magic, garbage header
    with pytest.raises(ModelLoadError, match="llama.cpp could not load"):
        load(str(bad), backend="llama.cpp")
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load(str(not_gguf), backend="llama.cpp")
