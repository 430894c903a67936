"""The llama.cpp backend: a GGUF model through llama-cpp-python's low-level C API.

A tree is ONE `llama_batch`: node i carries its token, its position (prefix + depth) and the sequence
id of every leaf path through it, and asks for its logits. llama.cpp's attention lets a token see the
cached tokens that share one of its sequence ids at earlier positions, so each node sees exactly the
committed prefix and its own ancestors — tree attention without a mask (llama.cpp's own
speculative-tree example works this way). The prefix is tagged with every leaf's id first
(`llama_memory_seq_cp`, free with a unified KV cache: cells just gain an id).

After verification the accepted path lies on the path of some leaf k: drop every other leaf's id
(`seq_rm(id, -1, -1)`), cut leaf k's sequence after the path (`seq_rm(k, prefix + m, -1)`), and leaf k's
id becomes the sequence's id. No KV data moves.

Limits: one tree may use at most n_seq_max sequence ids, one per leaf (llama.cpp caps n_seq_max at 256;
default here 64). The KV cache (n_ctx tokens) is shared by every open sequence.

A batch (B independent rows) runs in a llama context of its own with one KV stream per row
(`kv_unified=False`): in the unified cache every row's token would attend over all rows' cells (masked),
which cost 1.6x the decode time and 1.9x the prefill time at B=8 with 500-token prompts (measured, one
thread: docs/backends.md) and made the rows' logits differ from the row decoded alone by up to 1.45. With a
stream per row a row's logits are bitwise those of the row alone. The batch context starts at 8 rows x
the capacity hint; longer rows double the cells per row (the rows' KV states move over exactly,
`llama_state_seq_get/set_data`), more rows double the row count (rows are prefilled again there:
equal up to the near-tie rounding, see `LlamaBatch.grow`).

Hidden states are not exposed: drafters that read the target's features need the torch backend.

Per-step cost: while any sequence or batch row is open, torch runs on ONE intra-op thread
(`TorchThreads`). The engine's own torch work between decodes is tiny (an argmax, a TokenTree), but
each parallel torch op wakes torch's OpenMP workers, which then spin-wait and take the cores from
llama.cpp's threads: measured (1 llama.cpp thread, loaded 2-core machine) 33 vs 27 ms CPU per step, i.e.
all of the gap to llama-cpp-python's own loop. Logits are read once per decode as one view of
llama.cpp's output buffer and copied once.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from clmkit.backends import register, tree_leaves
from clmkit.errors import ClmkitError, InputError, ModelLoadError
from clmkit.tree import TokenTree

# The one install line for the backend (also in the Makefile and docs/backends.md): a portable AVX2 build,
# no server/examples/tools; ~20 min on 2 cores the first time, then pip's wheel cache makes it instant.
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
              "-DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "
              "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF")
INSTALL = f'CMAKE_ARGS="{CMAKE_ARGS}" pip install "llama-cpp-python==0.3.36"   (or: make setup)'


def llama_lib():
    """The llama_cpp module, or a clear error with the install command."""
    try:
        import llama_cpp
    except ImportError as e:
        raise ModelLoadError(f"the llama.cpp backend needs llama-cpp-python ({e}); install it with: {INSTALL}") from None
    return llama_cpp


_QUIET = None  # the log callback must outlive the library's use of it


class TorchThreads:
    """torch's intra-op threads set to 1 while llama.cpp holds the cores, restored when the last user
    leaves (torch's thread count is process-wide, so users are counted across backends)."""

    users = 0
    saved = 0

    @classmethod
    def enter(cls) -> None:
        if cls.users == 0:
            cls.saved = torch.get_num_threads()
            torch.set_num_threads(1)
        cls.users += 1

    @classmethod
    def leave(cls) -> None:
        cls.users -= 1
        if cls.users == 0:
            torch.set_num_threads(cls.saved)

    @classmethod
    def available(cls) -> int:
        """The thread count torch had before any llama.cpp user lowered it."""
        return cls.saved if cls.users else torch.get_num_threads()


def _silence(lib) -> None:
    global _QUIET
    if _QUIET is None:
        _QUIET = lib.llama_log_callback(lambda level, text, data: None)
        lib.llama_log_set(_QUIET, ctypes.c_void_p(0))
        lib.llama_backend_init()


class LlamaCppBackend:
    name = "llama.cpp"
    # Top-2 logit gap below which a greedy divergence from plain decoding is excused as rounding: the
    # quantized kernels give a 1-token decode and a multi-token batch logits up to ~0.45 apart on the
    # shipped Q4_1 GGUF (measured; docs/backends.md). torch's is clmkit.parity.NEAR_TIE.
    near_tie = 0.5

    def __init__(self, gguf: Path, n_ctx: int = 8192, n_seq_max: int = 64, n_batch: int = 512,
                 n_threads: int | None = None, flash_attn: bool = False):
        lib = self.lib = llama_lib()
        _silence(lib)
        gguf = Path(gguf)
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file not found: {gguf}")
        with gguf.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{gguf} is not a GGUF file (bad magic bytes): corrupt or incomplete download?")
        if not 1 <= n_seq_max <= 256:
            raise InputError(f"n_seq_max must be in [1, 256] (llama.cpp's limit), got {n_seq_max}")
        mparams = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {gguf} (unsupported architecture or damaged file; "
                                 "try --backend torch)")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.vocab_size = lib.llama_vocab_n_tokens(self.vocab)
        self.context_length = min(lib.llama_model_n_ctx_train(self.model), n_ctx)
        self.eos_token_ids = {t for t in range(self.vocab_size) if lib.llama_vocab_is_eog(self.vocab, t)}
        self.n_batch = n_batch
        self.threads = n_threads or TorchThreads.available() or os.cpu_count() or 1
        self.flash_attn = flash_attn
        self.ctx = self.new_context(self.context_length, n_seq_max, unified=True)  # unified: a seq_cp only tags cells
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise ModelLoadError(f"llama.cpp could not create a context for {gguf} (n_ctx={self.context_length})")
        self.mem = lib.llama_get_memory(self.ctx)
        self.max_leaves = self.max_rows = n_seq_max
        self.free_ids = list(range(n_seq_max))
        self.batch_buf = lib.llama_batch_init(max(n_batch, n_seq_max), 0, n_seq_max)

    def new_context(self, n_ctx: int, n_seq_max: int, unified: bool):
        """A llama context on this model (NULL if llama.cpp cannot make it); unified=False gives every
        sequence its own n_ctx / n_seq_max cells."""
        lib = self.lib
        cparams = lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, self.n_batch, self.n_batch
        cparams.n_seq_max, cparams.kv_unified = n_seq_max, unified
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.no_perf = True
        # llama-cpp-python's own default (the benchmark anchor): flash attention rounds differently
        cparams.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                   else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        return lib.llama_init_from_model(self.model, cparams)

    def __del__(self):
        lib = getattr(self, "lib", None)
        if lib is None or not getattr(self, "ctx", None):
            return
        try:
            lib.llama_batch_free(self.batch_buf)
            lib.llama_free(self.ctx)
            lib.llama_model_free(self.model)
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    # -- sequence ids ----------------------------------------------------------------------------

    def take_ids(self, n: int, why: str) -> list[int]:
        if n > len(self.free_ids):
            raise InputError(f"{why} needs {n} llama.cpp sequence ids but only {len(self.free_ids)} of n_seq_max="
                             f"{self.max_leaves} are free; use a smaller tree (--tree-budget) or load with a larger n_seq_max")
        taken, self.free_ids = self.free_ids[:n], self.free_ids[n:]
        return taken

    def give_ids(self, ids: list[int]) -> None:
        for i in ids:
            self.lib.llama_memory_seq_rm(self.mem, i, -1, -1)
        self.free_ids.extend(ids)

    # -- decoding --------------------------------------------------------------------------------

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[list[int]], logits: list[bool],
               ctx=None, buf=None) -> torch.Tensor:
        """One llama_decode per n_batch tokens (in `ctx`, default the sequences' context); the logits
        [k, vocab] of the k tokens that asked for them."""
        ctx, b = ctx or self.ctx, buf or self.batch_buf
        out = torch.empty(sum(logits), self.vocab_size)
        filled = 0
        for start in range(0, len(tokens), self.n_batch):
            end = min(start + self.n_batch, len(tokens))
            for j, i in enumerate(range(start, end)):
                b.token[j], b.pos[j], b.logits[j] = tokens[i], positions[i], logits[i]
                b.n_seq_id[j] = len(seq_ids[i])
                for k, s in enumerate(seq_ids[i]):
                    b.seq_id[j][k] = s
            b.n_tokens = end - start
            rc = self.lib.llama_decode(ctx, b)
            if rc == 1:
                raise ClmkitError(f"the llama.cpp KV cache is full ({self.lib.llama_n_ctx(ctx)} tokens shared by all "
                                  "open sequences): fewer or shorter sequences, or load with a larger n_ctx")
            if rc != 0:
                raise ClmkitError(f"llama_decode failed with code {rc}")
            n_out = sum(logits[start:end])
            if n_out:  # llama.cpp's output rows, in batch order: one view, one copy (the buffer is reused)
                rows = np.ctypeslib.as_array(self.lib.llama_get_logits(ctx), shape=(n_out, self.vocab_size))
                out[filled : filled + n_out] = torch.from_numpy(rows)
                filled += n_out
        return out

    def sequence(self, capacity: int) -> "LlamaSequence":
        return LlamaSequence(self)

    def batch(self, capacity: int) -> "LlamaBatch":
        return LlamaBatch(self, capacity)


class LlamaSequence:
    def __init__(self, backend: LlamaCppBackend):
        self.b = backend
        [self.seq] = backend.take_ids(1, "a sequence")
        TorchThreads.enter()
        self.length = 0
        self.hidden_states = None
        self._extra: list[int] = []  # the tree's borrowed leaf ids, until keep
        self._leaf_ids: list[list[int]] = []  # per node: the seq ids of the leaves below it

    def prefill(self, ids: list[int], hidden: bool = False) -> torch.Tensor:
        _no_hidden(hidden)
        n = len(ids)
        logits = self.b.decode(ids, list(range(self.length, self.length + n)), [[self.seq]] * n, [False] * (n - 1) + [True])
        self.length += n
        return logits[-1]

    def tree(self, tree: TokenTree, hidden: bool = False) -> torch.Tensor:
        _no_hidden(hidden)
        if len(tree) == 1:  # a plain step: the root alone on this sequence
            self._leaf_ids = [[self.seq]]
            return self.b.decode([int(tree.tokens[0])], [self.length], self._leaf_ids, [True])
        leaves = tree_leaves(tree)
        if len(leaves) > self.b.max_leaves:
            raise InputError(f"a draft tree with {len(leaves)} leaves exceeds the llama.cpp backend's limit of "
                             f"{self.b.max_leaves} (n_seq_max): use a smaller tree (--tree-budget) or a larger n_seq_max")
        self._extra = self.b.take_ids(len(leaves) - 1, f"a draft tree with {len(leaves)} leaves")
        leaf_seq = dict(zip(leaves, [self.seq, *self._extra]))
        for s in self._extra:  # every leaf path sees the committed prefix
            self.b.lib.llama_memory_seq_cp(self.b.mem, self.seq, s, -1, -1)
        below: list[list[int]] = [[leaf_seq[i]] if i in leaf_seq else [] for i in range(len(tree))]
        parents = tree.parents.tolist()
        for i in range(len(tree) - 1, 0, -1):  # children come after parents: gather bottom-up
            below[parents[i]] = below[i] + below[parents[i]]
        self._leaf_ids = below
        positions = (self.length + tree.depth).tolist()
        return self.b.decode(tree.tokens.tolist(), positions, below, [True] * len(tree))

    def keep(self, path: list[int]) -> None:
        keeper = self._leaf_ids[path[-1]][0]  # a leaf sequence through the last accepted node
        lib, mem = self.b.lib, self.b.mem
        for s in [self.seq, *self._extra]:
            if s != keeper:
                lib.llama_memory_seq_rm(mem, s, -1, -1)
        lib.llama_memory_seq_rm(mem, keeper, self.length + len(path), -1)
        self.b.free_ids.extend(s for s in [self.seq, *self._extra] if s != keeper)
        self.seq, self._extra, self._leaf_ids = keeper, [], []
        self.length += len(path)

    def truncate(self, length: int) -> None:
        if self._extra:  # a tree was verified but not kept: drop its extra leaves
            self.b.give_ids(self._extra)
            self._extra = []
        self.b.lib.llama_memory_seq_rm(self.b.mem, self.seq, length, -1)
        self.length = min(self.length, length)

    def close(self) -> None:
        if self.seq is not None:
            self.b.give_ids([self.seq, *self._extra])
            self.seq, self._extra = None, []
            TorchThreads.leave()

    def __del__(self):  # a sequence dropped without close() must not leave torch on one thread
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass


class LlamaBatch:
    """One KV stream per row in a context of its own (see the module docstring); a step is one
    llama_batch holding one token per stepping row. A row's handle is its sequence id there."""

    def __init__(self, backend: LlamaCppBackend, capacity: int):
        self.b = backend
        self.slots = min(8, backend.max_rows)
        self.cells = _round_up(min(max(capacity, 1), backend.context_length))  # per row
        self.ctx = self.buf = None
        self.open()
        self.tokens: dict[int, list[int]] = {}  # row -> the tokens in its stream

    def open(self) -> None:
        lib = self.b.lib
        ctx = self.b.new_context(self.slots * self.cells, self.slots, unified=False)
        if not ctx:
            raise ClmkitError(f"llama.cpp could not create a batch context of {self.slots} rows x {self.cells} "
                              "tokens (out of memory?): fewer rows or shorter rows")
        self.ctx, self.buf = ctx, lib.llama_batch_init(max(self.b.n_batch, self.slots), 0, 1)

    def grow(self, rows: int, length: int) -> None:
        """A context with room for `rows` rows of `length` tokens; the open rows move over. With the same
        row count a row's KV state is copied (exact); llama.cpp's saved state names the context's stream
        count, so with more rows each row is prefilled again (equal up to the near-tie rounding)."""
        lib = self.b.lib
        old_ctx, old_buf, old_size = self.ctx, self.buf, (self.slots, self.cells)
        while self.slots < rows:
            self.slots = min(2 * self.slots, self.b.max_rows)
        while self.cells < length:
            self.cells = min(2 * self.cells, _round_up(self.b.context_length))
        states = {}
        for row in self.tokens if self.slots == old_size[0] else ():
            n = lib.llama_state_seq_get_size(old_ctx, row)
            states[row] = (ctypes.c_uint8 * n)()
            lib.llama_state_seq_get_data(old_ctx, states[row], n, row)
        try:
            self.open()
        except ClmkitError:
            self.ctx, self.buf, (self.slots, self.cells) = old_ctx, old_buf, old_size  # the rows stay usable
            raise
        lib.llama_batch_free(old_buf)
        lib.llama_free(old_ctx)
        for row, ids in self.tokens.items():
            if row in states:
                if lib.llama_state_seq_set_data(self.ctx, states[row], len(states[row]), row) == 0:
                    raise ClmkitError(f"llama.cpp could not move batch row {row} into the grown batch context")
            else:
                self.b.decode(ids, list(range(len(ids))), [[row]] * len(ids), [False] * len(ids), self.ctx, self.buf)

    def add(self, ids: list[int]) -> tuple[int, torch.Tensor]:
        if len(self.tokens) >= self.b.max_rows:
            raise InputError(f"the llama.cpp backend decodes at most {self.b.max_rows} rows at once (n_seq_max)")
        if len(ids) > self.b.context_length:
            raise InputError(f"a batch row of {len(ids)} tokens exceeds the context ({self.b.context_length})")
        row = min(set(range(self.b.max_rows)) - set(self.tokens))
        if row >= self.slots or len(ids) > self.cells:
            self.grow(row + 1, len(ids))
        n = len(ids)
        try:
            logits = self.b.decode(ids, list(range(n)), [[row]] * n, [False] * (n - 1) + [True], self.ctx, self.buf)
        except ClmkitError:  # a prompt decoded in part leaves nothing behind
            self.b.lib.llama_memory_seq_rm(self.b.lib.llama_get_memory(self.ctx), row, -1, -1)
            raise
        TorchThreads.enter()
        self.tokens[row] = list(ids)
        return row, logits[-1]

    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        unknown = set(tokens) - set(self.tokens)
        if unknown:
            raise ValueError(f"batch rows {sorted(unknown)} are not in this batch")
        rows = list(tokens)
        longest = max(len(self.tokens[r]) for r in rows) + 1
        if longest > self.cells:
            if longest > self.b.context_length:
                raise InputError(f"a batch row would exceed the context ({self.b.context_length} tokens)")
            self.grow(self.slots, longest)
        logits = self.b.decode([tokens[r] for r in rows], [len(self.tokens[r]) for r in rows], [[r] for r in rows],
                               [True] * len(rows), self.ctx, self.buf)
        for r in rows:
            self.tokens[r].append(tokens[r])
        return dict(zip(rows, logits))

    def drop(self, row: int) -> None:
        self.tokens.pop(row)
        self.b.lib.llama_memory_seq_rm(self.b.lib.llama_get_memory(self.ctx), row, -1, -1)
        TorchThreads.leave()

    def __del__(self):
        lib = self.b.lib
        try:
            for _ in self.tokens:  # rows never dropped must not leave torch on one thread
                TorchThreads.leave()
            self.tokens = {}
            if self.ctx:
                lib.llama_batch_free(self.buf)
                lib.llama_free(self.ctx)
                self.ctx = None
        except Exception:  # interpreter shutdown: the library may already be gone
            pass


def _round_up(n: int, to: int = 256) -> int:
    return -(-n // to) * to


def _no_hidden(hidden: bool) -> None:
    if hidden:
        raise InputError("the llama.cpp backend does not expose hidden states; drafters that read the target's "
                         "features need --backend torch")


@register("llama.cpp")
def make(gguf: Path, **options) -> LlamaCppBackend:
    return LlamaCppBackend(gguf, **options)


def load_llamacpp(gguf: Path, name: str, chat: bool | None, tokenizer_dir: Path, **options):
    """A Model whose forwards run in llama.cpp: the tokenizer from HF (read from the GGUF once and saved),
    no torch weights (model.module is a NoTorchWeights stand-in)."""
    from clmkit.models import Model, NoTorchWeights, cache_dir

    backend = LlamaCppBackend(gguf, **options)
    tokenizer = _tokenizer(gguf, tokenizer_dir, cache_dir() / "tokenizers" / tokenizer_dir.name)
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    return Model(name=name, module=NoTorchWeights(name, "llama.cpp"), tokenizer=tokenizer, source=gguf, chat=chat,
                 backend=backend)


def _tokenizer(gguf: Path, converted: Path, saved: Path):
    """The HF tokenizer: from the torch backend's converted copy or an earlier save, else read from the
    GGUF's metadata (a few seconds, no weights) and saved for next time."""
    from transformers import AutoTokenizer

    for folder in (converted, saved):
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:
        raise ModelLoadError(f"could not read the tokenizer from {gguf}: {type(e).__name__}: {e}") from e
    try:
        tokenizer.save_pretrained(saved)
    except OSError:
        pass  # an unwritable cache only costs the re-read next time
    return tokenizer
