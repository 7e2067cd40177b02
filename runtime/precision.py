"""Devices, and one precision policy for every CLI, trainer and benchmark.

`auto`, the default everywhere, is the fastest precision the hardware runs natively:
- CUDA: bf16 where the GPU supports it, else fp16 (with a GradScaler when training);
- CPU: bf16 where the CPU has native bf16 instructions (AVX512-BF16 or AMX on x86, the
  bf16 extension on Arm) and oneDNN has bf16 kernels for it, else fp32.

Without native bf16, oneDNN and ATen emulate it: on a 2-core AVX2 CPU a stage-2 training
step took 101-151 s in bf16 against 5.3 s in fp32. An explicit bf16 there still runs, but
says so once. The hardware is read through torch's own capability queries (ATen's CPU
capability, cpuinfo's ISA flags, oneDNN's bf16 check), never from CPU model names; so
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` makes an AVX-512 machine resolve as
an AVX2 one (to also time like one, MKL_ENABLE_INSTRUCTIONS=AVX2 and
FBGEMM_ENABLE_INSTRUCTIONS=AVX2 must cap MKL's sgemm and FBGEMM's int8 GEMMs, which
otherwise keep using AVX-512: benchmarks/common.py, ISA_LIMITS). The kernel choices that
depend on the precision and the machine (`fused_attention`, `packed_linears` and
`channels_last` here) follow the same answers.
"""
from __future__ import annotations

import contextlib
import platform
import sys

import torch

from utils import UserError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = ["auto", *PRECISIONS]
_SAID: set[str] = set()  # messages already printed by this process


def resolve_device(name: str | None) -> torch.device:
    """`None`/'auto' -> CUDA when present, else CPU. Asking for absent CUDA is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was requested but this machine has no CUDA; "
                        f"use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device '{name}'; use cpu, cuda or cuda:N") from None


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _cpu_has(feature: str) -> bool | None:
    """torch.cpu's query for an x86 `feature` ('avx512_bf16', 'amx_tile'); None where this
    torch has no such query (torch 2.5 added both)."""
    query = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return None if query is None else bool(query())


def _bf16_flags_unknown() -> bool:
    """An AVX-512 x86 CPU whose torch cannot say whether it has bf16 instructions."""
    return (_x86() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
            and _cpu_has("avx512_bf16") is None and _cpu_has("amx_tile") is None)


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware, as oneDNN and ATen will use it.

    oneDNN's check alone also says yes on AVX-512 CPUs without bf16 instructions, which it
    emulates; ATen's capability (AVX2 when forced by ATEN_CPU_CAPABILITY) rules out its
    vector kernels on such a CPU. Where torch cannot tell, no: fp32 is never the 20x slower
    choice."""
    onednn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if not onednn:
        return False
    if not _x86():
        return True  # oneDNN reports bf16 on Arm only with the bf16 extension
    return (torch.backends.cpu.get_cpu_capability().startswith("AVX512")
            and bool(_cpu_has("avx512_bf16") or _cpu_has("amx_tile")))


def cpu_kind() -> str:
    """The CPU as benchmarks name it: AMX, AVX512-BF16, AVX512, AVX2 or ATen's capability,
    with whether oneDNN runs bf16 natively here."""
    cap = torch.backends.cpu.get_cpu_capability()
    if _bf16_flags_unknown():
        return f"{cap}, bf16 unknown to torch {torch.__version__}"
    if cap.startswith("AVX512") and _x86():
        cap = "AMX" if _cpu_has("amx_tile") else (
            "AVX512-BF16" if _cpu_has("avx512_bf16") else "AVX512")
    return f"{cap}, {'native' if cpu_native_bf16() else 'no native'} bf16"


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision, reason) for `requested` in CHOICES on `device`. Pure: prints nothing."""
    if requested not in CHOICES:
        raise UserError(f"unknown precision '{requested}'; choose one of {', '.join(CHOICES)}")
    device = torch.device(device)
    if requested != "auto":
        return requested, "as configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU supports bf16"
        return "fp16", "auto: this GPU has no bf16, fp16 with a GradScaler"
    if device.type == "cpu":
        if cpu_native_bf16():
            return "bf16", f"auto: the CPU has native bf16 ({cpu_kind()})"
        if _bf16_flags_unknown():
            return "fp32", (f"auto: torch {torch.__version__} cannot tell whether this "
                            f"{torch.backends.cpu.get_cpu_capability()} CPU has native bf16; "
                            f"torch 2.5 or newer can")
        return "fp32", f"auto: the CPU has no native bf16 ({cpu_kind()}), where bf16 is many times slower"
    return "fp32", f"auto: {device.type} has no mixed-precision policy here"


def say_once(message: str, stream=None) -> None:
    """Print `message` (to stdout by default) unless this process already has."""
    if message not in _SAID:
        _SAID.add(message)
        print(message, file=stream or sys.stdout, flush=True)


def resolve_precision(requested: str, device: torch.device, what: str = "precision") -> str:
    """`choose_precision`, saying the choice and its reason once per process; an explicit
    bf16 on a CPU without native bf16 runs, with a warning."""
    precision, reason = choose_precision(requested, device)
    say_once(f"{what}: {precision} ({reason})")
    if precision == "bf16" and torch.device(device).type == "cpu" and not cpu_native_bf16():
        emulated = "may be emulated, and then runs" if _bf16_flags_unknown() else "is emulated and runs"
        say_once(f"warning: bf16 on this CPU ({cpu_kind()}) {emulated} many times "
                 f"slower than fp32 (101-151 s against 5.3 s for a cat-face training step on "
                 f"a 2-core AVX2 CPU); use --precision auto or fp32", sys.stderr)
    return precision


def autocast(device: torch.device, precision: str):
    """Autocast context for a resolved `precision` in {fp32, bf16, fp16}; fp32 is a no-op."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def fused_attention(device, precision: str, training: bool, attn_drop: float = 0.0) -> bool:
    """Whether the fused attention kernel is the faster one for this work.

    On CUDA it is (flash / memory-efficient kernels). On CPU, for inference, measured at
    the lab config (N = 256, head_dim = 48): 5-12% faster for bf16 (AMX), and in fp32 on
    an AVX2 CPU 1.18x the hand-written attention's transformer forward at batch 16, with
    the same tokens (benchmarks/bench_fast_paths.py; the hand-written scores, 16 heads x
    256 x 256 per image, no longer fit the caches). For CPU training only in fp32 without
    attention dropout: one attention layer's forward and backward ran 1.1-1.7x the
    hand-written one's there, at the cat-face recipe's and the lab's shapes, on AMX and
    under AVX2 emulation. In bf16 the flash kernel's backward is the slower one (the
    hand-written layer 1.15-1.20x), and dropout sends F.scaled_dot_product_attention to its
    unfused math path (the hand-written layer 1.05x in fp32, 1.4-1.7x in bf16;
    benchmarks/EXPERIMENTS.md). For bf16 inference on an AVX512-BF16 CPU without AMX, the
    hand-written path, which computes the scores of 16 heads at a time (N = 256), ran the
    transformer forward 1.11-1.15x the flash kernel's at the lab's and the cat-face
    recipe's shapes (batch 16); in fp32 under AVX2 emulation it did not (0.92-1.0x). Both
    compute the same function; the lab-style baseline keeps the hand-written one.
    """
    if torch.device(device).type == "cuda":
        return precision != "fp32"
    if training:
        return precision == "fp32" and attn_drop == 0
    if precision == "bf16":
        return not _x86() or bool(_cpu_has("amx_tile"))  # flash's bf16 kernels use AMX tiles
    return precision == "fp32"


def packed_linears(device, precision: str) -> bool:
    """Whether inference multiplies by oneDNN-packed weights, packed once per decode
    (models/Transformer/packed.py).

    bf16: on x86 CPUs with native bf16 (the same logits as autocast, 7% faster decoding on
    AMX); not on Arm, where the packed kernel was never run.
    fp32: on AVX2 CPUs, where oneDNN's packed fp32 matmul beat MKL's sgemm at 2 threads:
    1.10x the transformer forward at the lab config, batch 16, with the same tokens
    (benchmarks/bench_fast_paths.py). Not measured on AVX-512 in fp32, so not used there:
    it trades MKL for oneDNN, whose relative speed depends on the instruction set.
    """
    if torch.device(device).type != "cpu":
        return False
    if precision == "bf16":
        return cpu_native_bf16() and _x86()  # measured on x86 only; Arm keeps autocast's path
    return precision == "fp32" and torch.backends.cpu.get_cpu_capability() == "AVX2"


def channels_last(device, precision: str, training: bool = False) -> bool:
    """Whether the VQGAN's convolutions (and in training the PatchGAN's) run in channels_last
    (NHWC).

    oneDNN computes NCHW convolutions in a blocked layout and reorders the activations into
    it and back around every convolution; NHWC needs no reorder. Inference: fp32 on CPU,
    where the tokens and pixels are bit-equal (benchmarks/bench_fast_paths.py checks) and it
    was measured faster on an AVX2 CPU: encode 1.07x, decode 1.06x at the lab config, batch
    16 (benchmarks/RESULTS.md). Training: bf16 on CPUs with native bf16, where a stage-1 step
    of the cat-face recipe ran 1.63-1.74x faster on AMX (benchmarks/bench_vqgan_train.py) and the
    conditional fine-tune 1.43x (training_conditional.py); and fp32, where the stage-1 step
    ran 1.13x on a real AVX2 EPYC (benchmarks/RESULTS.md) and 1.02-1.05x under AVX2
    emulation and on AMX (benchmarks/EXPERIMENTS.md). Without oneDNN (torch's macOS arm64
    wheels are built without it) there is no reorder to save, and with oneDNN switched off
    the recipe's fp32 stage-1 step ran 0.89x in channels_last: NCHW there. GPUs keep NCHW
    (not measured).
    """
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if training:
        return precision == "fp32" or (precision == "bf16" and cpu_native_bf16())
    return precision == "fp32"


def memory_format(device, precision: str, training: bool = False) -> torch.memory_format:
    """`channels_last`'s answer as the memory format to move modules and batches to."""
    return torch.channels_last if channels_last(device, precision, training) else torch.contiguous_format
