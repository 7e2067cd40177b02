"""PSNR of inpainted folders by region, against a masked set's ground truth: over the known
pixels (what a decoder should give back), over the holes (a masked metric: the MSE of the
hole pixels alone, per image), and over the whole image.

    python benchmarks/region_psnr.py --masked-dir masked \\
        --results runs/catface/inpainting/test_results runs/catface/inpainting/plain_results

Image i of each results folder is compared with the i-th file of <masked-dir>/gt under the
i-th mask of <masked-dir>/mask64 (0 = hole); files are matched in sorted order, as the FID
and inpainting.py's image_{i:03d}.png names do. Prints one markdown row per folder: the mean
over images of each per-image PSNR, in dB on [0, 1] pixels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import list_images  # noqa: E402
from metrics.fid import load_images  # noqa: E402
from metrics.psnr import psnr  # noqa: E402
from utils import UserError  # noqa: E402


def load_known(mask_dir: Path) -> torch.Tensor:
    """The masks of a masked set as (N, 1, H, W) floats, 1 = known (mask >= 128)."""
    masks = [np.array(Image.open(p).convert("L")) >= 128 for p in list_images(mask_dir)]
    return torch.from_numpy(np.stack(masks)).unsqueeze(1).float()


def region_psnr(results: Path, gt: torch.Tensor, known: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR of the images in `results` against `gt` (N, 3, H, W) uint8 over
    the known pixels, the holes and the whole image."""
    pred = load_images(results)
    if pred.shape != gt.shape:
        raise UserError(f"{results} holds {tuple(pred.shape)} images against the ground truth's "
                        f"{tuple(gt.shape)}; pass the folder inpainted from this masked set")
    pred01, gt01 = pred.float() / 255, gt.float() / 255
    return {"known": psnr(pred01, gt01, known).nanmean().item(),
            "hole": psnr(pred01, gt01, 1 - known).nanmean().item(),
            "whole": psnr(pred01, gt01).mean().item()}


def main(argv=None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masked-dir", required=True, help="a masked set: gt/, mask64/ (and masked_image/)")
    p.add_argument("--results", nargs="+", required=True, help="folders of inpainted images")
    args = p.parse_args(argv)
    masked = Path(args.masked_dir)
    gt, known = load_images(masked / "gt"), load_known(masked / "mask64")
    if len(known) != len(gt):
        raise UserError(f"{masked}: {len(known)} masks for {len(gt)} ground-truth images")
    print("| results | PSNR known (dB) | PSNR holes (dB) | PSNR whole (dB) |\n|---|---|---|---|")
    rows = {}
    for folder in map(Path, args.results):
        rows[str(folder)] = r = region_psnr(folder, gt, known)
        print(f"| {folder} | {r['known']:.2f} | {r['hole']:.2f} | {r['whole']:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
