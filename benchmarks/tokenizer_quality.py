"""Stage-1 quality: reconstruction FID, PSNR and codebook usage of VQGAN checkpoints, on the
first N images of a folder (the 747 val images of the quality table by default).

    python benchmarks/tokenizer_quality.py --ckpts runs/vqgan/curve/step_*.pt \\
        --images ../shared/datasets/cat_face/val --n 747 --out runs/bench/tokenizer

rFID compares each checkpoint's reconstructions with their originals (statistics of the
originals computed once); lower is better. Prints one markdown row per checkpoint, sorted
by training step, so a list of checkpoints along a run gives the curve against steps.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import normalization  # noqa: E402
from data.sources import image_tensor  # noqa: E402
from metrics.fid import calculate_fid_given_paths, save_statistics  # noqa: E402
from models.VQGAN_Transformer import load_vqgan  # noqa: E402
from pipeline import write_reconstructions  # noqa: E402
from runtime.checkpoints import load_checkpoint  # noqa: E402
from runtime.precision import resolve_device  # noqa: E402
from training_vqgan import evaluate  # noqa: E402
from utils import ensure_writable_dir  # noqa: E402


def run(ckpts: list[Path], images_dir: Path, n: int, out: Path, device) -> list[dict]:
    out = ensure_writable_dir(out)
    images = image_tensor(str(images_dir), 64, "val")[:n]
    originals = ensure_writable_dir(out / "originals")
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(originals / f"image_{i:03d}.png")
    stats = out / "originals_stats.npz"
    save_statistics(originals, stats, device)
    rows = []
    for ckpt in ckpts:
        step = load_checkpoint(ckpt).get("step")
        vq, cfg = load_vqgan(None, ckpt)
        vq = vq.to(device)
        mean, std = normalization(cfg, "test")
        metrics = evaluate(vq, images, mean, std, device)
        rec = write_reconstructions(vq, images, out / "rec", mean, std)
        fid = calculate_fid_given_paths(rec, stats, device)
        shutil.rmtree(rec)
        rows.append({"ckpt": str(ckpt), "step": step, "rfid": fid, "psnr": metrics["val_psnr"],
                     "usage": metrics["val_usage"], "perplexity": metrics["val_perplexity"]})
        print(f"| {ckpt} | {step} | {fid:.2f} | {metrics['val_psnr']:.2f} | "
              f"{100 * metrics['val_usage']:.1f}% | {metrics['val_perplexity']:.0f} |", flush=True)
    return sorted(rows, key=lambda r: r["step"] or 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--images", default="../shared/datasets/cat_face/val")
    p.add_argument("--n", type=int, default=747)
    p.add_argument("--out", default="runs/bench/tokenizer")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    ckpts = sorted(map(Path, args.ckpts), key=lambda c: load_checkpoint(c).get("step") or 0)
    print("| checkpoint | step | rFID | PSNR (dB) | codebook usage | perplexity |\n|---|---|---|---|---|---|")
    return run(ckpts, Path(args.images), args.n, Path(args.out), resolve_device(args.device))


if __name__ == "__main__":
    main()
