"""The mask-conditioned decoder's cost (issue 16): decoding a batch of token grids through
the plain decoder and through the conditional one (models/VQGAN/conditional.py), timed in
turns in the same run, for the cat-face recipe's CompactVQGAN and for the lab's VQGAN.

    python benchmarks/bench_conditional_decode.py [--quick] [--batch 16]

Random weights (speed does not depend on them; the zero-initialised fusion convs are
filled, so nothing is skipped), lab-like masks, `precision: auto`. Each row gives ms per
image of the conditional decode against the plain one, and in its note the extra time per
image and the branch's size (`count_branch`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, interleaved_wall_cpu, machine, masked_batch, table  # noqa: E402
from models.VQGAN import build_vqgan  # noqa: E402
from models.VQGAN.conditional import BRANCH_OPTIONS, count_branch, load_tokenizer_weights  # noqa: E402
from runtime.precision import autocast, resolve_device, resolve_precision  # noqa: E402
from utils import load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = {"cat-face recipe (CompactVQGAN)": "VQGAN_catface_compact.yml", "lab VQGAN": "VQGAN.yml"}
# the branch the conditional recipe trains: its pixel-space fusion and hole guide as it sets them
RECIPE = load_config(CONFIGS / "VQGAN_catface_conditional.yml")
BRANCH = {k: RECIPE[k] for k in BRANCH_OPTIONS}


def models(cfg: dict, config: Path, device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(plain VQGAN, the same weights with a conditional branch whose fusion is non-zero)."""
    torch.manual_seed(0)
    plain = build_vqgan(cfg, str(config)).to(device).eval()
    cond = build_vqgan({**cfg, "conditional": True, **BRANCH}, str(config)).to(device).eval()
    load_tokenizer_weights(cond, plain.state_dict(), config, verbose=False)
    with torch.no_grad():
        for conv in cond.cond.fusion_convs():
            conv.weight.normal_(0, 0.02)
    return plain, cond


@torch.inference_mode()
def run(device=None, quick: bool = False, batch: int | None = None,
        names: list[str] | None = None) -> list[Row]:
    device = resolve_device(device)
    precision = resolve_precision("auto", device)
    batch = batch or (4 if quick else 16)
    rows = []
    for name in names or MODELS:
        cfg = load_config(CONFIGS / MODELS[name])
        plain, cond = models(cfg, CONFIGS / MODELS[name], device)
        image, known = masked_batch(cfg, batch, device)  # (B, 3, R, R), (B, 1, R, R)
        r = cfg["latent_resolution"]
        indices = torch.randint(0, cfg["num_codebook_vectors"], (batch, r * r), device=device)

        def decode(vq, *cond_inputs):
            with autocast(device, precision):
                vq.decode_indices(indices, *cond_inputs)
        fns = {"plain": lambda: decode(plain), "conditional": lambda: decode(cond, image, known)}
        for fn in fns.values():
            fn()  # warm-up: kernel choice and allocator
        wall, cpu = interleaved_wall_cpu(fns, device, 2 if quick else 5)
        ms = {k: 1e3 * v / batch for k, v in wall.items()}
        params, macs = count_branch(cond, cfg["img_resolution"])
        rows.append(Row(f"VQGAN decode, conditional vs plain, {name}, batch {batch}", ms["conditional"],
                        ms["plain"], "ms/image", higher=False, precision=precision,
                        note=f"+{ms['conditional'] - ms['plain']:.2f} ms per image "
                             f"(+{100 * (wall['conditional'] / wall['plain'] - 1):.0f}%; CPU time "
                             f"+{100 * (cpu['conditional'] / cpu['plain'] - 1):.0f}%); branch "
                             f"{params / 1e3:.0f}k params, {macs / 1e6:.0f}M MAC/image"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="batch 4, 2 repeats")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 16)")
    args = p.parse_args(argv)
    info = machine(resolve_device(args.device))
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    print(table(run(args.device, args.quick, args.batch)))


if __name__ == "__main__":
    main()
