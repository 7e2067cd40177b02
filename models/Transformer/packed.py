"""Linear layers whose bf16 weights are pre-packed for oneDNN, for CPU inference.

Under CPU bf16 autocast, every nn.Linear call casts its weight and hands it to a oneDNN
matmul that first re-lays it out into the kernel's blocked format. Decoding calls each
layer T times with the same weights, so `packed_weights` casts and packs them once for a
whole decode. The matmul kernel and its accumulation are the same, so the outputs are the
autocast outputs (tests/test_transformer.py checks this); only the repeated packing goes.
At the lab config it makes bf16 decoding about 7% faster (benchmarks/RESULTS.md).
"""
import contextlib

import torch
import torch.nn as nn

from runtime.precision import cpu_native_bf16


class Linear(nn.Linear):
    """nn.Linear that multiplies by a pre-packed bf16 weight while `packed` is set."""

    packed: tuple | None = None  # (weight, bias) from packed_weights, for inference only

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.packed is None:
            return super().forward(x)
        weight, bias = self.packed
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).to(torch.bfloat16),
                                               weight, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])


def can_pack(device: torch.device) -> bool:
    """Whether linears would run packed here: CPU bf16 autocast, no autograd, and a CPU with
    native bf16 (the precision policy's own test) under a torch with oneDNN's packed linear."""
    return (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not torch.is_grad_enabled()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and cpu_native_bf16())


@contextlib.contextmanager
def packed_weights(module: nn.Module, rows: int):
    """Within the context, every `Linear` of `module` uses bf16 weights packed for about
    `rows` input rows (a layout hint; any count works). A no-op unless `can_pack`. The
    weights must not change inside the context."""
    linears = [m for m in module.modules() if isinstance(m, Linear)]
    if not linears or not can_pack(linears[0].weight.device):
        yield
        return
    for m in linears:
        bias = None if m.bias is None else m.bias.to(torch.bfloat16)
        m.packed = (torch.ops.mkldnn._reorder_linear_weight(m.weight.to(torch.bfloat16), rows), bias)
    try:
        yield
    finally:
        for m in linears:
            m.packed = None
