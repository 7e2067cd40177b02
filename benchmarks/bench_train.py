"""Stage-2 training throughput at the lab config (forward + backward + optimizer step),
the lab-style baseline against ours, with each variant's peak memory.

    python benchmarks/bench_train.py [--quick] [--batch 8] [--device cpu] [--config tiny]

  baseline  lab_baseline.train_step_lab_style: the VQGAN encoder on every batch, fp32,
            the hand-written attention, Adam, loss.item() every step.
  ours      the step of training_transformer.py with a token cache (no encoder), in the
            precision the policy picks for this machine (runtime/precision.py: bf16 autocast
            where the CPU or GPU runs bf16 natively, fp32 elsewhere, e.g. on AVX2 CPUs), the
            faster attention kernel for it (common.fast_path: fused on CUDA; on CPU the
            hand-written one at the lab config, whose attention dropout sends SDPA to its
            math path), AdamW + grad clipping, no .item().
  attention one attention layer's forward + backward with the kernel the training policy
            picks against the other one, per precision and attention dropout, at the
            cat-face recipe's and the lab's shapes: a ratio >= 1 says the pick is the faster.
Each variant runs in its own subprocesses, so its peak resident memory (ru_maxrss; on CUDA
max_memory_allocated) is its own. The subprocesses take turns (baseline, ours, baseline,
ours, ...) so that a change of load from other jobs hits both alike; the best step counts.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Row, add_common_args, build_maskgit, fast_path,  # noqa: E402
                               generated_images, interleaved, lab_path, maskgit_config,
                               peak_rss_mb, table, timed)
from benchmarks.lab_baseline import train_step_lab_style  # noqa: E402
from data import normalization, normalize  # noqa: E402
from models.Transformer.attention import MultiHeadAttention  # noqa: E402
from models.VQGAN_Transformer import MaskGit  # noqa: E402
from training_transformer import build_optimizer  # noqa: E402
from runtime.precision import (autocast, choose_precision, fused_attention,  # noqa: E402
                               resolve_device, resolve_precision)

VARIANTS = ("baseline", "ours")
# (name, dim, heads, batch) at N = 256 tokens: the cat-face recipe's transformer, the lab's
ATTENTION_SHAPES = (("cat-face recipe", 256, 8, 32), ("lab", 768, 16, 8))


def train_step(model: MaskGit, tokens: torch.Tensor, opt, autocast, grad_clip: float = 1.0):
    """One step of training_transformer.py (accum 1) on cached token ids (B, N) in [0, K).
    The loss is returned as a tensor: reading it (.item()) would wait for the device."""
    model.train()
    with autocast():
        logits, target, _ = model(tokens)
    loss = MaskGit.loss(logits, target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.transformer.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def worker(variant: str, device, config: str, batch: int, steps: int) -> dict:
    """Time `steps` training steps of one variant (after one untimed step)."""
    device = resolve_device(device)
    model = build_maskgit(device, config)
    if variant == "baseline":
        res = model.vq_config["img_resolution"]
        mean, std = normalization(model.vq_config, "train")
        images = normalize(generated_images(batch, res).float() / 255, mean, std).to(device)
        lab_path(model)
        opt = torch.optim.Adam(model.transformer.parameters(), lr=1e-4, betas=(0.9, 0.96))
        step = lambda: train_step_lab_style(model, images, opt)
    else:
        # token ids as read from the cache (bench_token_cache times the cache itself)
        tokens = torch.randint(0, model.mask_token_id, (batch, model.num_image_tokens), device=device)
        factory = fast_path(model, device, resolve_precision("auto", device), training=True)
        opt = build_optimizer(model.transformer, maskgit_config(config)["train_param"])
        step = lambda: train_step(model, tokens, opt, factory)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, repeats=steps, warmup=1)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else peak_rss_mb()
    return {"images_per_s": batch / seconds, "peak_mb": peak}


def run(device=None, config: str = "lab", quick: bool = False, batch: int | None = None) -> list[Row]:
    device = resolve_device(device)
    batch = batch or (2 if quick else 8)
    result = {variant: {"images_per_s": 0.0, "peak_mb": 0.0} for variant in VARIANTS}
    for _ in range(1 if quick else 2):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", variant, "--config", config,
                   "--batch", str(batch), "--steps", "1", "--device", str(device)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"bench_train worker '{variant}' failed:\n{out.stderr[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            result[variant] = {k: max(v, got[k]) for k, v in result[variant].items()}
    ours, base = result["ours"], result["baseline"]
    precision = choose_precision("auto", device)[0]  # as the worker resolved it
    memory = "GPU max allocated" if device.type == "cuda" else "ru_maxrss"
    return [
        Row(f"train fwd+bwd+step, batch {batch}", ours["images_per_s"], base["images_per_s"],
            "images/s", note="target >= 2.5x", precision=precision),
        Row("train peak memory", ours["peak_mb"], base["peak_mb"], "MiB", higher=False,
            note=f"{memory}, each variant in its own process", precision=precision),
    ]


def attention_rows(device=None, quick: bool = False, shapes=ATTENTION_SHAPES) -> list[Row]:
    """One attention layer's forward + backward in training, with the kernel the policy picks
    (runtime.precision.fused_attention) against the other one, in this machine's precision
    and in fp32, with and without attention dropout."""
    device = resolve_device(device)
    rows = []
    for name, dim, heads, batch in shapes:
        x = torch.randn(batch, 256, dim, device=device, requires_grad=True)
        for precision in sorted({choose_precision("auto", device)[0], "fp32"}):
            for drop in (0.0, 0.1):
                layer = MultiHeadAttention(dim, heads, drop).to(device).train()
                pick = fused_attention(device, precision, True, drop)

                def step(fused, layer=layer, precision=precision):
                    layer.fused = fused
                    with autocast(device, precision):
                        out = layer(x)
                    out.float().sum().backward()
                fns = {fused: (lambda fused=fused: step(fused)) for fused in (pick, not pick)}
                for fn in fns.values():  # warm-up
                    fn()
                seconds = interleaved(fns, device, repeats=2 if quick else 6)
                kernel = "fused" if pick else "hand-written"
                rows.append(Row(f"attention fwd+bwd, {name}, dropout {drop}, batch {batch}",
                                seconds[pick] * 1e3, seconds[not pick] * 1e3, "ms", higher=False,
                                precision=precision,
                                note=f"the policy's {kernel} kernel against the other one"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="images per step (default 8)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.config, args.batch, args.steps)))
    else:
        print(table(run(args.device, args.config, args.quick, args.batch)
                    + attention_rows(args.device, args.quick)))


if __name__ == "__main__":
    main()
