"""Linear-layer kernels for the torch backend, chosen at load time from what this CPU is.

Nearly all of a small LM's decode time is its nn.Linear layers. torch's default CPU GEMM re-lays out
the weight on every call and, on some CPUs (AMD EPYC through MKL), takes a slow generic path for
n >= 2 rows, which makes verifying a tree cost 2-3x a plain step. oneDNN can pack each weight once
into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`) and multiply any number of rows
against it (`_linear_pointwise`) — the kernels torch.compile's inductor uses for CPU linears, called
eagerly here. The model keeps its HF definition: only the Linear modules of a structural copy are
swapped, every other weight is shared, and the original module stays the correctness oracle.

`auto` times the candidates on this model's own layer shapes for n = 1 and n = 16 rows (the plain
step and a tree verify) and keeps the fastest: no tuning constant measured on another machine.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from clmkit.errors import InputError

KERNELS = ("auto", "hf", "onednn", "onednn-bf16")


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


def packed_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A structural copy of `module` sharing every weight, its nn.Linear layers replaced by PackedLinear."""
    shared = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    fast = copy.deepcopy(module, memo=shared)
    for name, child in list(fast.named_modules()):
        for attr, sub in list(child.named_children()):
            if type(sub) is nn.Linear:
                setattr(child, attr, PackedLinear(sub, dtype))
    return fast


def _linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    """The distinct (out, in) shapes of the model's Linear layers (lm_head included)."""
    return sorted({(m.out_features, m.in_features) for m in module.modules() if type(m) is nn.Linear})


def micro_benchmark(module: nn.Module, kernels: tuple[str, ...] = ("hf", "onednn"), budget_s: float = 1.0) -> dict:
    """Seconds per layer-set multiply for n = 1 and n = 16 rows, per kernel, on this model's shapes.

    Interleaved rounds, minimum per kernel (the machine may be shared: the minimum is the least
    disturbed run)."""
    shapes = _linear_shapes(module)
    layers = {k: [] for k in kernels}
    for out_f, in_f in shapes:
        lin = nn.Linear(in_f, out_f, bias=False)
        for k in kernels:
            layers[k].append(lin if k == "hf" else PackedLinear(lin, torch.bfloat16 if k == "onednn-bf16" else torch.float32))
    xs = {n: [torch.randn(n, i) for _, i in shapes] for n in (1, 16)}
    best = {k: float("inf") for k in kernels}
    deadline = time.perf_counter() + budget_s
    with torch.inference_mode():
        rounds = 0
        while rounds < 2 or (time.perf_counter() < deadline and rounds < 50):
            for k in kernels:
                start = time.perf_counter()
                for n in (1, 16):
                    for lin, x in zip(layers[k], xs[n]):
                        lin(x)
                best[k] = min(best[k], time.perf_counter() - start)
            rounds += 1
    return best


def with_kernel(module: nn.Module, kernel: str) -> tuple[nn.Module, str]:
    """(module to run, kernel used). `auto` picks between the fp32 kernels (same numbers as HF)."""
    if kernel not in KERNELS:
        raise InputError(f"unknown torch kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if kernel != "hf" and not torch.backends.mkldnn.is_available():
        if kernel == "auto":
            return module, "hf"
        raise InputError(f"kernel {kernel!r} needs oneDNN (mkldnn), which this torch build lacks")
    dtype = next(module.parameters()).dtype
    if kernel == "auto":
        if dtype != torch.float32:
            return module, "hf"
        times = micro_benchmark(module)
        kernel = min(times, key=times.get)
    if kernel == "hf":
        return module, "hf"
    return packed_copy(module, torch.bfloat16 if kernel == "onednn-bf16" else torch.float32), kernel
