"""Stage-1 training speed: a full step (autoencoder and discriminator) of the cat-face recipe
against the previous recipe (configs/VQGAN_catface.yml, fp32, as it ran), in the same run.

    python benchmarks/bench_vqgan_train.py            # 45 s on a 2-core Zen 4 (bf16)
    python benchmarks/bench_vqgan_train.py --quick    # 15 s, three rows

Each row gives images/s and the achieved GFLOP/s, counted by forward hooks on every
convolution and linear layer (a training step costs 3x its forward FLOPs: forward, and
the gradients of inputs and weights). The step is training_vqgan.train_step itself, with
the GAN on, so the discriminator's cost is in. The last line reads
`vqgan train speedup: <x>x` (the recipe at its own precision and layout against the old one).
Each step is timed 12 times in turns (6 with --quick) and its best counts: the recipe's step
lasts about 0.2 s, and with 2-4 turns the speedup moved by up to 25% from run to run on a
2-core Zen 4 VM (3.5x-4.6x); with 12 turns, 3.65x and 3.73x in two runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, generated_images, interleaved, machine, table  # noqa: E402
from models.VQGAN import build_vqgan  # noqa: E402
from models.VQGAN.discriminator import Discriminator  # noqa: E402
from runtime.precision import channels_last, resolve_device, resolve_precision  # noqa: E402
from training_vqgan import train_step  # noqa: E402
from utils import load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OLD, NEW = CONFIGS / "VQGAN_catface.yml", CONFIGS / "VQGAN_catface_compact.yml"


def forward_flops(module: nn.Module, *inputs) -> int:
    """Multiply-adds x 2 of every Conv2d and Linear in one forward of `module`."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw
        else:
            total += 2 * out.numel() * m.in_features
    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(*inputs)
    for h in handles:
        h.remove()
    return total


class Step:
    """One recipe's training step on a fixed batch, with its FLOPs per image."""

    def __init__(self, config: Path, precision: str, batch: int, device, channels_last=False):
        cfg = load_config(config)
        tc = cfg["training"]
        self.precision, self.batch = precision, batch
        self.vq = build_vqgan(cfg, str(config)).to(device)
        self.disc = Discriminator(cfg["image_channels"], tc["disc_channels"], tc["disc_layers"]).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.vq, self.disc = self.vq.to(memory_format=fmt), self.disc.to(memory_format=fmt)
        self.opt_ae = torch.optim.Adam(self.vq.parameters(), lr=tc["learning_rate"], betas=tuple(tc["betas"]))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=tc["learning_rate"], betas=tuple(tc["betas"]))
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
        images = generated_images(batch, cfg["img_resolution"]).float() / 127.5 - 1
        self.x = images.to(device).contiguous(memory_format=fmt)
        self.device, self.l2, self.gan = device, tc["l2_weight"], tc["disc_weight"] or 0.1
        # G forward, G's pass through D, then D on real and fake: 3 D forwards per step
        per_image = forward_flops(self.vq, self.x[:1]) + 3 * forward_flops(self.disc, self.x[:1])
        self.train_flops = 3 * per_image  # per image: forward + the two backward products

    def __call__(self):
        train_step(self.vq, self.disc, self.vq.last_layer, self.opt_ae, self.opt_d, self.scaler,
                   self.x, self.gan, self.l2, self.device, self.precision)


def run(device=None, quick: bool = False) -> list[Row]:
    device = resolve_device(device)
    auto = resolve_precision("auto", device)
    old_batch = load_config(OLD)["training"]["batch_size"]
    new_batch = load_config(NEW)["training"]["batch_size"]
    # the recipe in the layout training_vqgan picks (runtime/precision.py), and the other one below
    nhwc = channels_last(device, auto, training=True)
    recipe = f"new recipe (VQGAN_catface_compact, {auto}{', channels_last' if nhwc else ''})"
    steps = {"old recipe (VQGAN_catface, fp32)": Step(OLD, "fp32", old_batch, device),
             recipe: Step(NEW, auto, new_batch, device, nhwc)}
    if auto != "fp32":
        fp32_nhwc = channels_last(device, "fp32", training=True)
        steps[f"new recipe, fp32{', channels_last' if fp32_nhwc else ''}"] = Step(
            NEW, "fp32", new_batch, device, fp32_nhwc)
    if not quick:
        steps[f"new recipe, {auto}, {'NCHW' if nhwc else 'channels_last'}"] = Step(
            NEW, auto, new_batch, device, not nhwc)
        steps[f"new recipe, {auto}, batch 64"] = Step(NEW, auto, 64, device, nhwc)
        steps[f"new recipe, {auto}, GroupNorm 16"] = Step(
            _with(NEW, norm_groups=16), auto, new_batch, device, nhwc)
    for fn in steps.values():  # warm-up: kernel choice and allocator
        fn(), fn()
    seconds = interleaved(steps, device, repeats=6 if quick else 12)
    base = old_batch / seconds["old recipe (VQGAN_catface, fp32)"]
    rows = []
    for name, fn in steps.items():
        ips = fn.batch / seconds[name]
        rows.append(Row(f"VQGAN train step, {name}", ips, base, "images/s", precision=fn.precision,
                        note=f"batch {fn.batch}, {fn.train_flops * ips / 1e9:.0f} GFLOP/s, "
                             f"{fn.train_flops / 1e9:.2f} GFLOP/image"))
    return rows


def _with(config: Path, **changes) -> Path:
    """A copy of `config` with top-level keys changed, for a variant row."""
    import tempfile
    import yaml
    cfg = load_config(config)
    cfg.update(changes)
    path = Path(tempfile.mkdtemp()) / config.name
    path.write_text(yaml.safe_dump(cfg))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    info = machine(resolve_device(args.device))
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    rows = run(args.device, args.quick)
    print(table(rows))
    print(f"vqgan train speedup: {rows[1].ratio:.2f}x")
    return rows


if __name__ == "__main__":
    main()
