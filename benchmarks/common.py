"""Shared by the benchmark scripts: lab-config models with random weights, timing that
waits for the device, the machine's matmul peak, FLOP counts and the result table.

Every script puts the repository root on sys.path before importing this, so the
benchmarks run from any working directory.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data import lab_mask, make_synthetic_images, normalization, normalize
from models.Transformer.attention import attention_dropout, set_fused
from models.Transformer.packed import Linear, packed_weights
from models.VQGAN_Transformer import MaskGit
from runtime.precision import autocast, choose_precision, cpu_kind, cpu_native_bf16, fused_attention
from utils import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"lab": ("MaskGit.yml", "VQGAN.yml"), "tiny": ("MaskGit_tiny.yml", "VQGAN_tiny.yml")}


def add_common_args(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--config", choices=list(CONFIGS), default="lab",
                   help="model size: the lab's (the reported figures) or tiny (smoke tests)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches")


def maskgit_config(config: str = "lab", vq_ckpt: str | Path | None = None) -> dict:
    """The whole MaskGit config, with the VQGAN config path made absolute; no VQGAN
    checkpoint by default (an untrained VQGAN: random weights are fine for speed)."""
    maskgit_yml, vq_yml = CONFIGS[config]
    cfg = load_config(ROOT / "configs" / maskgit_yml)
    cfg["model_param"]["VQ_Configs"] = {"VQ_config_path": str(ROOT / "configs" / vq_yml),
                                        "VQ_CKPT_path": None if vq_ckpt is None else str(vq_ckpt)}
    return cfg


def build_maskgit(device, config: str = "lab", seed: int = 0, vq_ckpt=None) -> MaskGit:
    """MaskGit with random weights. The [MASK] logit is pushed to ~-30 so the baseline's
    "sample again if [MASK] is drawn" loop never spins (ours masks it out anyway)."""
    torch.manual_seed(seed)
    model = MaskGit(maskgit_config(config, vq_ckpt)["model_param"]).to(device).eval()
    with torch.no_grad():
        model.transformer.bias[:, model.mask_token_id] = -30.0
    return model


def masked_batch(vq_config: dict, n: int, device, seed: int = 0):
    """n generated images (n, 3, R, R), normalised as the VQGAN config says, with lab brush
    masks (n, 1, R, R), 1 = known."""
    res = vq_config["img_resolution"]
    images = torch.from_numpy(make_synthetic_images(n, res, seed, "test")).permute(0, 3, 1, 2)
    rng = np.random.default_rng(seed)
    known = torch.from_numpy(np.stack([lab_mask(rng, res) for _ in range(n)]) > 0)
    mean, std = normalization(vq_config, "test")
    images = normalize(images.float() / 255, mean, std)
    return images.to(device), known[:, None].float().to(device)


def generated_images(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, R, R) generated training images."""
    return torch.from_numpy(make_synthetic_images(n, resolution, seed, "train")).permute(0, 3, 1, 2)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int = 1, warmup: int = 1) -> float:
    """Seconds per call of fn(): the best of `repeats` after `warmup` calls. The best,
    not the mean, because other jobs share the machine and only ever slow a run down."""
    for _ in range(warmup):
        fn()
    return interleaved_wall_cpu({"fn": fn}, device, repeats)[0]["fn"]


def interleaved(fns: dict, device, repeats: int) -> dict:
    """Best seconds per call of each fn(), timed in turns (a, b, c, a, b, c, ...) so that a
    change of load from other jobs hits every variant alike. Warm them up first."""
    return interleaved_wall_cpu(fns, device, repeats)[0]


def interleaved_wall_cpu(fns: dict, device, repeats: int) -> tuple[dict, dict]:
    """`interleaved`, with both clocks: ({name: best wall seconds}, {name: best CPU seconds
    of this process, all threads}) per call. On a machine shared with other jobs the CPU
    time is the steadier figure: it counts this process's work, plus what its threads spin
    while one of them waits for a core."""
    wall, cpu = dict.fromkeys(fns, float("inf")), dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            w, c = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name] = min(wall[name], time.perf_counter() - w)
            cpu[name] = min(cpu[name], time.process_time() - c)
    return wall, cpu


def matmul(dtype: torch.dtype, device, n: int = 4096):
    """(fn, FLOPs) of one large (n x n) @ (n x n) matmul: its rate is the practical peak."""
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)

    def fn():
        with torch.inference_mode():
            a @ b
    return fn, 2 * n ** 3


def packed_matmul(device, n: int = 4096, products: int = 4):
    """(fn, FLOPs) of `products` (n x n) @ (n x n) products through a Linear run as decoding
    runs it: bf16 autocast, its weight packed once per call on CPU (see
    models/Transformer/packed.py). On the transformer's shapes it beats torch.mm in bf16 on
    CPU, so the bf16 peak is the better of the two."""
    g = torch.Generator(device).manual_seed(0)
    layer = Linear(n, n, bias=False).to(device)
    x = torch.randn(n, n, device=device, generator=g)

    def fn():
        with torch.inference_mode(), autocast(torch.device(device), "bf16"), packed_weights(layer, n):
            for _ in range(products):
                layer(x)
    return fn, products * 2 * n ** 3


def transformer_flops(params: dict, batch: int) -> float:
    """Forward FLOPs of BidirectionalTransformer (matmuls only; norms, GELU and softmax are
    memory-bound and not counted). Per layer 2N(4d^2 + 2d h) for qkv + proj + MLP and
    2 * 2N^2 d for QK^T and AV; then 2N d^2 for Token_Prediction and 2N d (K+1) for the logits."""
    n, d, h = params["num_image_tokens"], params["dim"], params["hidden_dim"]
    vocab = params["num_codebook_vectors"] + 1
    layer = 2 * n * (4 * d * d + 2 * d * h) + 2 * 2 * n * n * d
    return batch * (params["n_layers"] * layer + 2 * n * d * d + 2 * n * d * vocab)


def fast_path(model: MaskGit, device, precision: str, training: bool):
    """Our inference/training setting in a resolved `precision`: the attention kernel the
    policy picks for it (runtime.precision.fused_attention) and an autocast context factory."""
    set_fused(model.transformer, fused_attention(device, precision, training,
                                                 attention_dropout(model.transformer)))
    return lambda: autocast(torch.device(device), precision)


def lab_path(model: MaskGit) -> None:
    """The lab's setting: the hand-written attention (fp32 is the default dtype)."""
    set_fused(model.transformer, False)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (ru_maxrss is in KiB on Linux, in bytes on
    macOS)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)


# Caps on the instruction sets the libraries use: with all four, an AVX-512/AMX host runs as
# an AVX2 one (ATen's kernels, oneDNN's, MKL's sgemm and FBGEMM's int8 GEMMs each read one).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "FBGEMM_ENABLE_INSTRUCTIONS")


def isa_limits() -> str:
    """The ISA caps set in the environment, e.g. 'ATEN_CPU_CAPABILITY=avx2 ...', or ''."""
    return " ".join(f"{k}={os.environ[k]}" for k in ISA_LIMITS if os.environ.get(k))


def machine_kind(device) -> str:
    """What a results table is kept per: the CPU kind (`cpu_kind`, with '(emulated ...)'
    when ISA caps are set) or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    limits = isa_limits()
    return cpu_kind() + (f" (emulated on this host via {limits})" if limits else "")


def machine(device) -> dict:
    """The machine a benchmark ran on: CPU model and kind, whether oneDNN has native bf16,
    the precision `auto` picks there, threads and versions."""
    device = torch.device(device)
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                   if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    info = {"cpu": cpu, "cpu kind": machine_kind(device),
            "oneDNN native bf16": "yes" if cpu_native_bf16() else "no",
            "precision auto picks": choose_precision("auto", device)[0],
            "cores": torch.multiprocessing.cpu_count(),
            "torch threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@dataclass
class Row:
    """One figure: ours against the baseline, `higher` says which direction is better."""
    name: str
    ours: float
    baseline: float | None = None
    unit: str = ""
    higher: bool = True
    note: str = ""
    precision: str = ""  # of ours (the lab-style baselines run fp32)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.ours or not self.baseline:
            return None
        return self.ours / self.baseline if self.higher else self.baseline / self.ours


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def table(rows: list[Row]) -> str:
    """A Markdown table (also readable in a terminal): ratio > 1 means ours is better."""
    lines = ["| figure | precision | ours | baseline | ratio | unit | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(f"| {r.name} | {r.precision or '-'} | {fmt(r.ours)} | {fmt(r.baseline)} | "
                     f"{ratio} | {r.unit} | {r.note} |")
    return "\n".join(lines)
