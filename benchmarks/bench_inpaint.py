"""Inpainting throughput at the lab config (T = 7), the lab-style baseline against ours,
and how close the transformer forward gets to this machine's matmul peak.

    python benchmarks/bench_inpaint.py [--quick] [--batch 16] [--device cpu] [--config tiny]

The issue's figure is inpainting from tokens: T transformer steps and the decode(s) to
pixels, on the tokens of the masked images. "End to end" adds the VQGAN encode of those
images, timed on its own in the same run (lab: one image at a time in fp32; ours: the batch
under the same autocast).
  baseline   lab_baseline.complete_lab_style: one image at a time, fp32, the hand-written
             attention, Categorical sampling, a VQGAN decode after every step.
  ours fp32  MaskGit.complete on a batch: inference_mode, Gumbel-max sampling, one decode,
             the config's attention, the last block's MLP and the head at masked positions
             only; its tokens equal the batch-1 tokens (checked here).
  ours bf16  the same under bf16 autocast (VQGAN too; one autocast context for all steps,
             with the transformer's weights cast and, on CPU, packed once: models/Transformer/
             packed.py) with the faster attention kernel (common.fast_path): what
             `inpainting.py --precision bf16` runs.
The forward efficiency rows time both attention kernels in bf16 (packed weights on CPU).
Random weights (speed does not depend on them); the [MASK] logit is kept low.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Row, add_common_args, build_maskgit, fast_path,  # noqa: E402
                               interleaved, lab_path, maskgit_config, masked_batch, matmul,
                               packed_matmul, table, transformer_flops)
from benchmarks.lab_baseline import complete_lab_style  # noqa: E402
from inpainting import image_generators  # noqa: E402
from models.Transformer.attention import set_fused  # noqa: E402
from models.Transformer.packed import packed_weights  # noqa: E402
from runtime.precision import fused_attention, resolve_device  # noqa: E402


def forward_call(model, params: dict, batch: int, device, factory, fused: bool):
    """(fn, FLOPs) of one transformer forward on (batch, N) random tokens with the given
    attention kernel (set inside fn, so calls can be interleaved with other variants), its
    weights packed as decoding packs them; `params` is the Transformer_param config, for
    the FLOP count."""
    tokens = torch.randint(0, model.mask_token_id + 1, (batch, model.num_image_tokens),
                           device=device, generator=torch.Generator(device).manual_seed(0))

    def fn():
        set_fused(model.transformer, fused)
        with torch.inference_mode(), factory(), packed_weights(model.transformer, tokens.numel()):
            model.transformer(tokens)
    return fn, transformer_flops(params, batch)


def run(device=None, config: str = "lab", quick: bool = False, batch: int | None = None,
        total_iter: int = 7, peak_size: int | None = None) -> list[Row]:
    device = resolve_device(device)
    batch = batch or (4 if quick else 16)
    repeats = 1 if quick else 3
    # the baseline times several images per call, so that each of its timings spans about as
    # long as ours: this VM's speed drifts by 10-25% over tens of seconds
    lab_images = min(batch, 1 if quick else 4)
    model = build_maskgit(device, config)
    images, known = masked_batch(model, batch, device)
    tokens = model.masked_tokens(images, known)  # fp32: the input of every variant
    bf16 = fast_path(model, device, "bf16", training=False)
    ours_fused = fused_attention(device, "bf16", training=False)
    batched = []

    def baseline(steps=total_iter, n=lab_images):
        lab_path(model)
        for i in range(n):  # the lab's way: one image at a time
            complete_lab_style(model, tokens[i:i + 1], steps)

    def baseline_encode():
        with torch.no_grad():
            for i in range(lab_images):
                model.encode_to_z(images[i:i + 1])

    def ours(factory=None, fused=False, steps=total_iter, n=batch):
        set_fused(model.transformer, fused)
        gens = image_generators(range(n), 0, device)
        return model.complete(tokens[:n], steps, gens, autocast=factory)[1]

    def ours_encode():
        model.masked_tokens(images, known, bf16)

    variants = {"baseline": baseline,
                "fp32": lambda: batched.append(ours()),
                "bf16": lambda: ours(bf16, ours_fused),
                "baseline encode": baseline_encode,
                "bf16 encode": ours_encode}
    baseline(1, 1), ours(steps=1), ours(bf16, ours_fused, steps=1), ours_encode()  # kernel setup
    t = interleaved(variants, device, repeats)
    lab_path(model)
    same = torch.equal(batched[0][:1], ours(n=1))  # the quality guard: batching changes nothing

    peak_size = peak_size or (2048 if quick else 4096)
    params = maskgit_config(config)["model_param"]["Transformer_param"]
    calls = {"peak fp32": matmul(torch.float32, device, peak_size),
             "peak bf16 mm": matmul(torch.bfloat16, device, peak_size),
             "peak bf16 linear": packed_matmul(device, peak_size),
             "fused": forward_call(model, params, batch, device, bf16, True),
             "hand-written": forward_call(model, params, batch, device, bf16, False),
             "lab": forward_call(model, params, 1, device, contextlib.nullcontext, False)}
    for fn, _ in calls.values():
        fn()
    best = interleaved({k: fn for k, (fn, _) in calls.items()}, device, repeats + 1)
    rate = {k: flops / best[k] / 1e9 for k, (_, flops) in calls.items()}  # GFLOP/s
    lab = rate["lab"]
    peak_bf16 = max(rate["peak bf16 mm"], rate["peak bf16 linear"])
    steps = f"T={total_iter}"
    rows = [Row(f"matmul peak fp32 ({peak_size}^3, torch.mm)", rate["peak fp32"], unit="GFLOP/s"),
            Row(f"matmul peak bf16 ({peak_size}^3, torch.mm)", rate["peak bf16 mm"], unit="GFLOP/s"),
            Row(f"matmul peak bf16 ({peak_size}^3, decoding's Linear)", rate["peak bf16 linear"],
                unit="GFLOP/s", note="autocast; weights packed on CPU")]
    rows += [Row(f"inpaint from tokens, fp32, batch {batch} ({steps})", batch / t["fp32"],
                 lab_images / t["baseline"], "images/s", note=f"tokens == batch-1 tokens: {same}"),
             Row(f"inpaint from tokens, bf16, batch {batch} ({steps})", batch / t["bf16"],
                 lab_images / t["baseline"], "images/s",
                 note="the issue's figure: transformer steps + decode; target >= 4x"),
             Row(f"inpaint end to end, bf16, batch {batch} ({steps})",
                 batch / (t["bf16"] + t["bf16 encode"]),
                 lab_images / (t["baseline"] + t["baseline encode"]), "images/s",
                 note="the same + the VQGAN encode of the masked images")]
    rows += [Row(f"transformer fwd bf16 {kernel}, batch {batch}", rate[kernel], lab, "GFLOP/s",
                 note=f"{100 * rate[kernel] / peak_bf16:.0f}% of the better bf16 peak"
                      + (" (ours here)" if (kernel == "fused") == ours_fused else ""))
             for kernel in ("fused", "hand-written")]
    rows.append(Row("transformer fwd baseline (fp32, batch 1, hand-written)", lab, unit="GFLOP/s",
                    note=f"{100 * lab / rate['peak fp32']:.0f}% of fp32 peak"))
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
