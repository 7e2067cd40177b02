"""Inpainting throughput at the lab config (T = 7), the lab-style baseline against ours,
and how close the transformer forward gets to this machine's matmul peak.

    python benchmarks/bench_inpaint.py [--quick] [--batch 16] [--device cpu] [--config tiny]

Each figure is a whole inpainting: VQGAN encode, T transformer steps and the decode(s).
  baseline   lab_baseline.inpaint_lab_style: one image at a time, fp32, the hand-written
             attention, Categorical sampling, a VQGAN decode after every step.
  ours fp32  MaskGit.inpaint on a batch: inference_mode, Gumbel-max sampling, one decode,
             the config's attention; its tokens equal the batch-1 tokens (checked here).
  ours bf16  the same under bf16 autocast (VQGAN too) with the faster attention kernel
             (common.fast_path): what `inpainting.py --precision bf16` runs.
The forward efficiency rows time both attention kernels in bf16.
Random weights (speed does not depend on them); the [MASK] logit is kept low.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Row, add_common_args, build_maskgit, fast_path, lab_path,  # noqa: E402
                               maskgit_config, masked_batch, matmul_peak, table, timed,
                               transformer_flops)
from benchmarks.lab_baseline import inpaint_lab_style  # noqa: E402
from inpainting import image_generators  # noqa: E402
from models.Transformer.attention import fused_is_faster, set_fused  # noqa: E402
from utils import resolve_device  # noqa: E402


def forward_gflops(model, params: dict, batch: int, device, factory, repeats: int) -> float:
    """Achieved GFLOP/s of one transformer forward on (batch, N) random tokens;
    `params` is the Transformer_param config (for the FLOP count)."""
    tokens = torch.randint(0, model.mask_token_id + 1, (batch, model.num_image_tokens),
                           device=device, generator=torch.Generator(device).manual_seed(0))

    def forward():
        with torch.inference_mode(), factory():
            model.transformer(tokens)
    return transformer_flops(params, batch) / timed(forward, device, repeats) / 1e9


def run(device=None, config: str = "lab", quick: bool = False, batch: int | None = None,
        total_iter: int = 7, peak_size: int | None = None) -> list[Row]:
    device = resolve_device(device)
    batch = batch or (4 if quick else 16)
    repeats = 1 if quick else 2
    model = build_maskgit(device, config)
    images, known = masked_batch(model, batch, device)
    gens = lambda idx: image_generators(idx, 0, device)

    def ours(factory=None, n=batch):
        return model.inpaint(images[:n], known[:n], total_iter, gens(range(n)), autocast=factory)

    # every variant first runs one step at its shapes, so one-time kernel setup is not timed
    lab_path(model)
    inpaint_lab_style(model, images[:1], known[:1], 1)
    t_base = timed(lambda: inpaint_lab_style(model, images[:1], known[:1], total_iter), device,
                   repeats=1 if quick else 3, warmup=0)

    model.inpaint(images, known, 1, gens(range(batch)))
    batched = []
    t_fp32 = timed(lambda: batched.append(ours()[1]), device, repeats, warmup=0)
    same = torch.equal(batched[0][:1], ours(n=1)[1])  # the quality guard: batching changes nothing

    bf16 = fast_path(model, device, "bf16")
    model.inpaint(images, known, 1, gens(range(batch)), autocast=bf16)
    t_bf16 = timed(lambda: ours(bf16), device, repeats, warmup=0)

    peak_size = peak_size or (2048 if quick else 4096)
    peak32 = matmul_peak(torch.float32, device, peak_size)
    peak16 = matmul_peak(torch.bfloat16, device, peak_size)
    params = maskgit_config(config)["model_param"]["Transformer_param"]
    fwd = {}
    for fused in (True, False):
        set_fused(model.transformer, fused)
        fwd[fused] = forward_gflops(model, params, batch, device, bf16, repeats + 1)
    fwd_lab = forward_gflops(model, params, 1, device, contextlib.nullcontext, repeats + 1)
    ours_kernel = fused_is_faster(device)
    ips = lambda t, n: n / t
    return [
        Row(f"matmul peak fp32 ({peak_size}^3)", peak32, unit="GFLOP/s"),
        Row(f"matmul peak bf16 ({peak_size}^3)", peak16, unit="GFLOP/s"),
        Row(f"inpaint fp32, batch {batch} (T={total_iter})", ips(t_fp32, batch), ips(t_base, 1),
            "images/s", note=f"tokens == batch-1 tokens: {same}"),
        Row(f"inpaint bf16, batch {batch} (T={total_iter})", ips(t_bf16, batch), ips(t_base, 1),
            "images/s", note="target >= 4x"),
        *[Row(f"transformer fwd bf16 {'fused' if fused else 'hand-written'}, batch {batch}",
              fwd[fused], fwd_lab, "GFLOP/s",
              note=f"{100 * fwd[fused] / peak16:.0f}% of bf16 peak"
                   + (" (ours here)" if fused == ours_kernel else ""))
          for fused in (True, False)],
        Row("transformer fwd baseline (fp32, batch 1, hand-written)", fwd_lab, unit="GFLOP/s",
            note=f"{100 * fwd_lab / peak32:.0f}% of fp32 peak"),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="ours: images per batch (default 16)")
    p.add_argument("--total-iter", type=int, default=7)
    args = p.parse_args(argv)
    print(table(run(args.device, args.config, args.quick, args.batch, args.total_iter)))


if __name__ == "__main__":
    main()
