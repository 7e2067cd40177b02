"""Stage-1 ablations: the cat-face recipe with one setting changed at a time, every run the
same number of images (and the same seed, data order and LR schedule shape), scored on val.

    python benchmarks/vqgan_ablation.py --data ../shared/datasets/cat_face --steps 750

Prints a markdown table, also written to <out>/ablation.md after every variant: val PSNR,
L1, codebook usage and perplexity of each variant (`training_vqgan.evaluate` on the val
folder) and its training time. The variants' rFID:
`python benchmarks/tokenizer_quality.py --ckpts runs/ablation/v*/last.pt`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import training_vqgan  # noqa: E402
from runtime.precision import cpu_kind  # noqa: E402
from utils import load_config  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "VQGAN_catface_compact.yml"
# name -> config overrides, each against the recipe
VARIANTS = {
    "recipe (4096 codes, 8-d l2-normalised, gradient updates, restarts)": [],
    "EMA code updates (decay 0.99)": ["ema_decay=0.99"],
    "2048 codes": ["num_codebook_vectors=2048"],
    "1024 codes (the recipe until 2026-12-06)": ["num_codebook_vectors=1024"],
    "512 codes": ["num_codebook_vectors=512"],
    "32-d codes": ["code_dim=32"],
    "no dead-code restarts": ["training.restart_every=1000000"],
    "GroupNorm (16 groups) in every block": ["norm_groups=16"],
    "PatchGAN from step 0 (weight 0.1)": ["training.disc_start=0"],
    "PatchGAN weight 0.5": ["training.disc_weight=0.5"],
    "no PatchGAN": ["training.disc_start=100000000"],
    "feature matching on the PatchGAN (weight 1)": ["training.fm_weight=1.0"],
    "batch 32, half the steps (the recipe before 2026-12-06)": ["training.batch_size=32"],
    "batch 8, twice the steps": ["training.batch_size=8"],
    "Adam betas (0.9, 0.99)": ["training.betas=[0.9,0.99]"],
    "L2 weight 5": ["training.l2_weight=5.0"],
    "Adam betas (0.9, 0.99), peak learning rate 3e-3": ["training.betas=[0.9,0.99]",
                                                       "training.learning_rate=3.0e-3"],
    "Euclidean code lookup (no l2-normalisation)": ["l2_normalize=false"],
}


def variant_dir(name: str, out: Path) -> Path:
    return out / f"v{list(VARIANTS).index(name)}"


def variant_args(name: str, data: Path, steps: int, out: Path) -> list[str]:
    """training_vqgan's command line for one variant; `steps` are of the recipe's batch."""
    changes = VARIANTS[name]
    sets = dict(s.split("=", 1) for s in changes)
    recipe = load_config(CONFIG)["training"]
    # a variant with another batch sees the same images: its steps, and the steps between
    # dead-code restarts, scale by the batch ratio
    scale = recipe["batch_size"] / int(sets.get("training.batch_size", recipe["batch_size"]))
    steps = round(steps * scale)
    sets.setdefault("training.restart_every", str(round(recipe["restart_every"] * scale)))
    # warm-up and the GAN start scale with the run, so a short run is the recipe in small
    sets.setdefault("training.warmup_steps", str(max(1, steps // 40)))
    sets.setdefault("training.disc_start", str(int(0.7 * steps)))
    return ["--config", str(CONFIG), "--data", str(data / "train"), "--val-data", str(data / "val"),
            "--out", str(variant_dir(name, out)), "--max-steps", str(steps),
            "--set", *(f"{k}={v}" for k, v in sets.items())]


def markdown(rows: list[dict], steps: int) -> str:
    batch = load_config(CONFIG)["training"]["batch_size"]
    lines = [f"{steps} steps of batch {batch} each (as many images at a variant's own batch), "
             f"CPU kind {cpu_kind()}", "",
             "| variant | val PSNR (dB) | val L1 | codebook usage | perplexity | minutes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['val_psnr']:.2f} | {r['val_l1']:.4f} | {100 * r['val_usage']:.1f}% "
              f"| {r['val_perplexity']:.0f} | {r['minutes']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def run(data: Path, steps: int, out: Path, names: list[str]) -> list[dict]:
    """Train every variant of `names` in turn; the table so far is rewritten to
    out/ablation.md after each, so a stop keeps the finished rows."""
    for name in names:  # every variant's config is checked before the first one trains
        training_vqgan.resolve_config(training_vqgan.parse_args(variant_args(name, data, steps, out)))
    rows = []
    for name in names:
        t = time.time()
        training_vqgan.main(variant_args(name, data, steps, out))
        last = json.loads((variant_dir(name, out) / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append({"variant": name, "minutes": (time.time() - t) / 60, **last})
        print(f"{name}: PSNR {last['val_psnr']:.2f}", flush=True)
        (out / "ablation.md").write_text(markdown(rows, steps))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/ and val/")
    p.add_argument("--steps", type=int, default=750, help="steps of the recipe's batch (750: one epoch)")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--only", nargs="*", type=int, help="variant numbers to run (default: all)")
    args = p.parse_args(argv)
    names = [n for i, n in enumerate(VARIANTS) if args.only is None or i in args.only]
    rows = run(Path(args.data), args.steps, Path(args.out), names)
    print("\n" + markdown(rows, args.steps))


if __name__ == "__main__":
    main()
