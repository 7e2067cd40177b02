"""Inpainting throughput at the lab config (T = 7), the lab-style baseline against ours,
and how close the transformer forward gets to this machine's matmul peak.

    python benchmarks/bench_inpaint.py [--quick] [--batch 16] [--device cpu] [--config tiny]

The issue's figure is inpainting from tokens: T transformer steps and the decode(s) to
pixels, on the tokens of the masked images. "End to end" adds the VQGAN encode of those
images, timed on its own in the same run (lab: one image at a time in fp32; ours: the batch
under the same autocast).
  baseline   lab_baseline.complete_lab_style: one image at a time, fp32, the hand-written
             attention, Categorical sampling, a VQGAN decode after every step.
  ours       MaskGit.complete on a batch, in the precision the policy picks for this machine
             (runtime/precision.py: bf16 on CPUs with native bf16, fp32 elsewhere, e.g. AVX2)
             with its kernels (inpainting.inference_kernels: the attention kernel, and
             channels_last VQGAN convolutions where the policy picks them): inference_mode,
             Gumbel-max sampling, one
             decode, the last block's MLP and the head at masked positions only; in bf16 one
             autocast context for all steps, the transformer's weights cast and, on CPU,
             packed once (models/Transformer/packed.py): what `inpainting.py` runs by default.
  fp32       the same in fp32 with the config's attention: its tokens equal the batch-1
             tokens (checked here). When ours is fp32, it is ours.
  int8       (fp32 machines only) ours with the transformer's linears in dynamic int8
             (`inpainting.py --int8`): approximate, off by default.
The forward efficiency rows time both attention kernels in ours' precision. Each ratio is
also given in this process's CPU seconds (steadier than wall time on a shared machine).
Random weights (speed does not depend on them); the [MASK] logit is kept low.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Row, add_common_args, build_maskgit,  # noqa: E402
                               interleaved, interleaved_wall_cpu, lab_path, maskgit_config,
                               masked_batch, matmul, packed_matmul, table, transformer_flops)
from benchmarks.lab_baseline import complete_lab_style  # noqa: E402
from inpainting import image_generators, inference_kernels  # noqa: E402
from models.Transformer.attention import set_fused  # noqa: E402
from models.Transformer.int8 import quantize_linears  # noqa: E402
from models.Transformer.packed import packed_weights, unpacked  # noqa: E402
from runtime.precision import (autocast, channels_last, fused_attention, packed_linears,  # noqa: E402
                               resolve_device, resolve_precision)


def forward_call(model, params: dict, batch: int, device, factory, fused: bool, pack: bool = True):
    """(fn, FLOPs) of one transformer forward on (batch, N) random tokens with the given
    attention kernel (set inside fn, so calls can be interleaved with other variants), its
    weights packed as decoding packs them (`pack`; else plain nn.Linear); `params` is the
    Transformer_param config, for the FLOP count."""
    tokens = torch.randint(0, model.mask_token_id + 1, (batch, model.num_image_tokens),
                           device=device, generator=torch.Generator(device).manual_seed(0))

    def fn():
        set_fused(model.transformer, fused)
        with torch.inference_mode(), factory():
            with packed_weights(model.transformer, tokens.numel()) if pack else unpacked():
                model.transformer(tokens)
    return fn, transformer_flops(params, batch)


def run(device=None, config: str = "lab", quick: bool = False, batch: int | None = None,
        total_iter: int = 7, peak_size: int | None = None) -> list[Row]:
    device = resolve_device(device)
    precision = resolve_precision("auto", device, "bench_inpaint, ours")
    batch = batch or (4 if quick else 16)
    repeats = 1 if quick else 3
    # the baseline times several images per call, so that each of its timings spans about as
    # long as ours: this VM's speed drifts by 10-25% over tens of seconds
    lab_images = min(batch, 1 if quick else 4)
    model = build_maskgit(device, config)
    images, known = masked_batch(model.vq_config, batch, device)
    tokens = model.masked_tokens(images, known)  # fp32: the input of every variant
    factory = lambda: autocast(device, precision)
    ours_fused = fused_attention(device, precision, training=False)
    # ours is what inpainting.py runs; `model` keeps the config's kernels (the lab's)
    ours_model = inference_kernels(copy.deepcopy(model), device, precision)
    int8 = device.type == "cpu" and precision == "fp32"  # where --int8 applies
    int8_model = quantize_linears(copy.deepcopy(ours_model)) if int8 else None
    batched = []

    def baseline(steps=total_iter, n=lab_images):
        lab_path(model)
        for i in range(n):  # the lab's way: one image at a time
            complete_lab_style(model, tokens[i:i + 1], steps)

    def baseline_encode():
        with torch.no_grad():
            for i in range(lab_images):
                model.encode_to_z(images[i:i + 1])

    def complete(maskgit, factory=None, steps=total_iter, n=batch):
        gens = image_generators(range(n), 0, device)
        return maskgit.complete(tokens[:n], steps, gens, autocast=factory)[1]

    def ours_encode():
        ours_model.masked_tokens(images, known, factory)

    variants = {"baseline": baseline, "baseline encode": baseline_encode, "ours encode": ours_encode}
    if precision == "fp32":  # ours is exact: its tokens are the guard's
        variants["ours"] = lambda: batched.append(complete(ours_model))
    else:  # the exact fp32 path, for the guard
        variants["ours"] = lambda: complete(ours_model, factory)
        variants["fp32"] = lambda: batched.append(complete(model))
    if int8:
        variants["int8"] = lambda: complete(int8_model)
    baseline(1, 1), ours_encode()  # kernel setup
    for maskgit in (ours_model, model if "fp32" in variants else None, int8_model):
        if maskgit is not None:
            complete(maskgit, factory if maskgit is ours_model else None, steps=1)
    t, cpu = interleaved_wall_cpu(variants, device, repeats)
    lab_path(model)
    with unpacked():  # the guard: the fp32 batch decodes to the tokens of the plain path, per image
        same = torch.equal(batched[0][:1], complete(model, n=1))

    peak_size = peak_size or (2048 if quick else 4096)
    params = maskgit_config(config)["model_param"]["Transformer_param"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    calls = {"peak fp32": matmul(torch.float32, device, peak_size)}
    if precision != "fp32":  # a bf16 peak on a CPU without native bf16 would take minutes
        calls[f"peak {precision} mm"] = matmul(dtype, device, peak_size)
    if precision == "bf16":
        calls["peak bf16 linear"] = packed_matmul(device, peak_size)
    calls |= {"fused": forward_call(model, params, batch, device, factory, True),
              "hand-written": forward_call(model, params, batch, device, factory, False),
              "lab": forward_call(model, params, 1, device, contextlib.nullcontext, False, pack=False)}
    for fn, _ in calls.values():
        fn()
    best = interleaved({k: fn for k, (fn, _) in calls.items()}, device, repeats + 1)
    rate = {k: flops / best[k] / 1e9 for k, (_, flops) in calls.items()}  # GFLOP/s
    lab = rate["lab"]
    peak = max(v for k, v in rate.items() if k.startswith(f"peak {precision}"))
    steps = f"T={total_iter}"
    cpu_ratio = lambda ours_s, base_s: f"CPU time {base_s / ours_s:.2f}x"
    rows = [Row(f"matmul peak fp32 ({peak_size}^3, torch.mm)", rate["peak fp32"], unit="GFLOP/s",
                precision="fp32")]
    if precision != "fp32":
        rows.append(Row(f"matmul peak {precision} ({peak_size}^3, torch.mm)", rate[f"peak {precision} mm"],
                        unit="GFLOP/s", precision=precision))
    if precision == "bf16":
        rows.append(Row(f"matmul peak bf16 ({peak_size}^3, decoding's Linear)", rate["peak bf16 linear"],
                        unit="GFLOP/s", precision="bf16", note="autocast; weights packed on CPU"))
    base, base_cpu = lab_images / t["baseline"], cpu["baseline"] / lab_images
    exact_name = "ours" if "fp32" not in t else "fp32"
    kernels = ", ".join(["fused attention" if ours_fused else "chunked hand-written attention"]
                        + [k for k, on in (("packed weights", packed_linears(device, precision)),
                                           ("channels_last VQGAN", channels_last(device, precision))) if on])
    rows.append(Row(f"inpaint from tokens, fp32, batch {batch} ({steps})", batch / t[exact_name], base,
                    "images/s", precision="fp32",
                    note=f"tokens == batch-1 tokens: {same}; {cpu_ratio(cpu[exact_name] / batch, base_cpu)}"
                         + (f"; ours here ({kernels})" if exact_name == "ours" else "")))
    if exact_name != "ours":
        rows.append(Row(f"inpaint from tokens, {precision}, batch {batch} ({steps})", batch / t["ours"],
                        base, "images/s", precision=precision,
                        note=f"the issue's figure: transformer steps + decode; target >= 4x; {kernels}; "
                             f"{cpu_ratio(cpu['ours'] / batch, base_cpu)}"))
    base_e2e = lab_images / (t["baseline"] + t["baseline encode"])
    base_e2e_cpu = (cpu["baseline"] + cpu["baseline encode"]) / lab_images
    target = ">= 4x" if precision == "bf16" else ">= 3x"
    rows.append(Row(f"inpaint end to end, {precision}, batch {batch} ({steps})",
                    batch / (t["ours"] + t["ours encode"]), base_e2e, "images/s", precision=precision,
                    note=f"the same + the VQGAN encode of the masked images; target {target}; "
                         f"{cpu_ratio((cpu['ours'] + cpu['ours encode']) / batch, base_e2e_cpu)}"))
    if int8:
        rows.append(Row(f"inpaint end to end, int8 linears, batch {batch} ({steps})",
                        batch / (t["int8"] + t["ours encode"]), base_e2e, "images/s", precision="int8+fp32",
                        note=f"approximate, off by default (inpainting.py --int8); FID within 1% of fp32's "
                             f"on the cat-face recipe (README); {cpu_ratio((cpu['int8'] + cpu['ours encode']) / batch, base_e2e_cpu)}"))
    rows += [Row(f"transformer fwd {precision} {kernel}, batch {batch}", rate[kernel], lab, "GFLOP/s",
                 precision=precision,
                 note=f"{100 * rate[kernel] / peak:.0f}% of the {'better ' if precision == 'bf16' else ''}"
                      f"{precision} peak" + (" (ours here)" if (kernel == "fused") == ours_fused else ""))
             for kernel in ("fused", "hand-written")]
    rows.append(Row("transformer fwd baseline (fp32, batch 1, hand-written)", lab, unit="GFLOP/s",
                    precision="fp32", note=f"{100 * lab / rate['peak fp32']:.0f}% of fp32 peak"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="ours: images per batch (default 16)")
    p.add_argument("--total-iter", type=int, default=7)
    args = p.parse_args(argv)
    print(table(run(args.device, args.config, args.quick, args.batch, args.total_iter)))


if __name__ == "__main__":
    main()
