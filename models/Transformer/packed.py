"""Linear layers whose weights are pre-packed for oneDNN, for CPU inference.

Under CPU bf16 autocast, every nn.Linear call casts its weight and hands it to a oneDNN
matmul that first re-lays it out into the kernel's blocked format. Decoding calls each
layer T times with the same weights, so `packed_weights` casts and packs them once for a
whole decode. The matmul kernel and its accumulation are the same, so the outputs are the
autocast outputs (tests/test_transformer.py checks this); only the repeated packing goes.
At the lab config it makes bf16 decoding about 7% faster (benchmarks/RESULTS.md).

In fp32 (no autocast) the same packing swaps MKL's sgemm for oneDNN's packed fp32 matmul,
where the precision policy says that is faster (runtime.precision.packed_linears: AVX2
CPUs). Its logits differ from MKL's by ~1e-6, so that is a kernel choice like the fused
attention, checked by the tokens: a batch still decodes to the tokens of its images alone.
"""
import contextlib

import torch
import torch.nn as nn

from runtime.precision import packed_linears

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_unpacked = False  # set by `unpacked`


class Linear(nn.Linear):
    """nn.Linear that multiplies by a pre-packed weight while `packed` is set."""

    packed: tuple | None = None  # (weight, bias) from packed_weights, for inference only

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.packed is None:
            return super().forward(x)
        weight, bias = self.packed
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).to(weight.dtype),
                                               weight, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])


def packed_precision(device: torch.device) -> str | None:
    """The precision linears would run packed in here, or None: 'bf16' under CPU bf16
    autocast, 'fp32' without autocast, each where the precision policy packs it; never
    with autograd, inside `unpacked`, nor under a torch without oneDNN's packed linear."""
    if (_unpacked or device.type != "cpu" or torch.is_grad_enabled()
            or not hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return None
    if not torch.is_autocast_enabled("cpu"):
        precision = "fp32"
    elif torch.get_autocast_dtype("cpu") == torch.bfloat16:
        precision = "bf16"
    else:
        return None
    return precision if packed_linears(device, precision) else None


def can_pack(device: torch.device) -> bool:
    """Whether `packed_weights` packs anything here (see `packed_precision`)."""
    return packed_precision(device) is not None


@contextlib.contextmanager
def unpacked():
    """Within the context nothing is packed: the plain nn.Linear path, the reference the
    benchmarks compare the packed one with."""
    global _unpacked
    saved, _unpacked = _unpacked, True
    try:
        yield
    finally:
        _unpacked = saved


@contextlib.contextmanager
def packed_weights(module: nn.Module, rows: int):
    """Within the context, every `Linear` of `module` uses weights packed (in the precision
    of `packed_precision`) for about `rows` input rows (a layout hint; any count works). A
    no-op where nothing is packed. The weights must not change inside the context."""
    linears = [m for m in module.modules() if isinstance(m, Linear)]
    precision = packed_precision(linears[0].weight.device) if linears else None
    if precision is None:
        yield
        return
    dtype = DTYPES[precision]
    for m in linears:
        bias = None if m.bias is None else m.bias.to(dtype)
        m.packed = (torch.ops.mkldnn._reorder_linear_weight(m.weight.to(dtype), rows), bias)
    try:
        yield
    finally:
        for m in linears:
            m.packed = None
