"""Linear-layer kernels for the torch backend, chosen at load time from what this CPU is.

Nearly all of a small LM's decode time is its nn.Linear layers. torch's default CPU GEMM re-lays out
the weight on every call and, on some CPUs (AMD EPYC through MKL), takes a slow generic path for
n >= 2 rows, which makes verifying a tree cost 2-3x a plain step. oneDNN can pack each weight once
into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`) and multiply any number of rows
against it (`_linear_pointwise`) — the kernels torch.compile's inductor uses for CPU linears, called
eagerly here. The model keeps its HF definition: only the Linear modules of a structural copy are
swapped, every other weight is shared, and the original module stays the correctness oracle.

Which kernel is faster depends on the CPU *and* on the number of rows: on an Intel AMX Xeon torch's
GEMM (MKL) wins a 1-row plain step while oneDNN wins a 4+-row tree verify. So `auto` keeps both
and dispatches every call by its row count (`RowDispatch`), from a load-time micro-benchmark that runs
all of this model's Linear layers in model order (the real working set: a decode step streams every
weight from memory, a single cache-hot layer would not) at the forward sizes the engine runs — 1 row
for a plain step, 2..32 for tree verifies — for each kernel. No tuning constant from another machine.
"""

from __future__ import annotations

import bisect
import copy
import time

import torch
from torch import nn

from clmkit.errors import InputError

KERNELS = ("auto", "hf", "onednn", "onednn-bf16")
# Row counts `auto` measures: the plain step and the tree sizes drafters verify (a call with a row count
# in between uses the next measured size up; prefills beyond the last use the last).
ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 GEMMs run natively (elsewhere they are emulated and slower)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


class PackedLinear(nn.Module):
    """y = x W^T + b with W pre-packed for oneDNN (fp32, or bf16 with fp32 in/out)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        weight = linear.weight.detach().to(dtype)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]).to(self.dtype), self.packed, self.bias,
                                               "none", [None], "")
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class RowDispatch:
    """Which kernel runs a call of n rows: the winner at the smallest measured size >= n."""

    def __init__(self, times: dict[int, dict[str, float]]):
        self.times = times  # rows -> kernel -> seconds for all the model's linears (the measurement)
        self.sizes = sorted(times)
        self.winner = [min(times[n], key=times[n].get) for n in self.sizes]
        # rows -> use the packed kernel, precomputed so a call costs one list index
        self._packed = [self.winner[min(bisect.bisect_left(self.sizes, n), len(self.sizes) - 1)] != "hf"
                        for n in range(self.sizes[-1] + 1)]

    def packed(self, rows: int) -> bool:
        return self._packed[min(rows, len(self._packed) - 1)]

    def label(self) -> str:
        """e.g. 'auto: hf at 1-3 rows, onednn at 4+ rows'."""
        spans, start = [], self.sizes[0]
        for i, n in enumerate(self.sizes):
            last = i + 1 == len(self.sizes)
            if last or self.winner[i + 1] != self.winner[i]:
                end = f"{start}+" if last else (f"{start}" if start == n else f"{start}-{n}")
                spans.append(f"{self.winner[i]} at {end} rows")
                if not last:
                    start = self.sizes[i] + 1
        return "auto: " + ", ".join(spans)


class DispatchLinear(nn.Module):
    """One nn.Linear with both kernels: torch's GEMM on the HF weight, and the oneDNN-packed copy."""

    def __init__(self, linear: nn.Linear, dispatch: RowDispatch | None = None):
        super().__init__()
        self.linear, self.fast = linear, PackedLinear(linear, torch.float32)
        self.dispatch = dispatch  # set after the measurement (shared by every layer of the model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        return self.fast(x) if self.dispatch.packed(rows) else self.linear(x)


def swap_linears(module: nn.Module, make) -> nn.Module:
    """A structural copy of `module` sharing every weight, each nn.Linear replaced by make(linear)."""
    shared = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    fast = copy.deepcopy(module, memo=shared)
    for child in list(fast.modules()):
        for attr, sub in list(child.named_children()):
            if type(sub) is nn.Linear:
                setattr(child, attr, make(sub))
    return fast


def packed_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A structural copy of `module` sharing every weight, its nn.Linear layers replaced by PackedLinear."""
    return swap_linears(module, lambda linear: PackedLinear(linear, dtype))


def micro_benchmark(kernels: dict[str, list[nn.Module]], rows=ROWS, budget_s: float = 1.5,
                    min_rounds: int = 2) -> dict[int, dict[str, float]]:
    """Seconds to run every layer of each kernel's list once (the model's linears in model order) on
    n-row inputs, for each n in `rows`. Kernels interleaved per size, rounds until the budget; the
    minimum per (size, kernel) is kept (the machine may be shared: the minimum is the least disturbed)."""
    first = next(iter(kernels.values()))
    inputs = {n: {f: torch.randn(n, f) for f in {layer.in_features for layer in first}} for n in rows}
    best = {n: {k: float("inf") for k in kernels} for n in rows}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    with torch.inference_mode():
        while rounds < min_rounds or time.perf_counter() < deadline:
            for n in rows:
                for k in (list(kernels)[rounds % 2:] + list(kernels)[: rounds % 2]):  # alternate who goes first
                    xs = inputs[n]
                    start = time.perf_counter()
                    for layer in kernels[k]:
                        layer(xs[layer.in_features])
                    best[n][k] = min(best[n][k], time.perf_counter() - start)
            rounds += 1
    return best


def auto_kernel(module: nn.Module, rows=ROWS, budget_s: float = 1.5) -> tuple[nn.Module, str, RowDispatch | None]:
    """Both fp32 kernels behind a RowDispatch measured on this model; the HF module alone if oneDNN
    wins at no measured size (no copy kept)."""
    fast = swap_linears(module, DispatchLinear)
    layers = [m for m in fast.modules() if isinstance(m, DispatchLinear)]
    if not layers:  # no nn.Linear (e.g. GPT-2's Conv1D): nothing to dispatch
        return module, "hf", None
    dispatch = RowDispatch(micro_benchmark({"hf": [d.linear for d in layers], "onednn": [d.fast for d in layers]},
                                           rows, budget_s))
    if not any(dispatch.packed(n) for n in dispatch.sizes):
        return module, dispatch.label(), dispatch
    for d in layers:
        d.dispatch = dispatch
    return fast, dispatch.label(), dispatch


def with_kernel(module: nn.Module, kernel: str) -> tuple[nn.Module, str, RowDispatch | None]:
    """(module to run, kernel label, the auto measurement or None). `auto` dispatches per row count
    between the fp32 kernels (same numbers as HF up to rounding); bf16 is only ever chosen explicitly."""
    if kernel not in KERNELS:
        raise InputError(f"unknown torch kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if kernel != "hf" and not torch.backends.mkldnn.is_available():
        if kernel == "auto":
            return module, "hf", None
        raise InputError(f"kernel {kernel!r} needs oneDNN (mkldnn), which this torch build lacks")
    if kernel == "auto":
        if next(module.parameters()).dtype != torch.float32:
            return module, "hf", None
        return auto_kernel(module)
    if kernel == "hf":
        return module, "hf", None
    return packed_copy(module, torch.bfloat16 if kernel == "onednn-bf16" else torch.float32), kernel, None
