"""FID of the classical inpainting baseline, OpenCV's cv2.inpaint (Telea), on a lab-style
masked set, next to the FID of the masked inputs themselves (grey holes).

    python benchmarks/classical_baseline.py --masked-dir runs/catface/masked_val
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import list_images  # noqa: E402
from metrics.fid import calculate_fid_given_paths, save_statistics  # noqa: E402
from utils import ensure_writable_dir  # noqa: E402


def telea_inpaint(masked_dir: Path, mask_dir: Path, out_dir: Path, radius: int = 3) -> Path:
    """Fill the holes (mask == 0) of each masked image with cv2.INPAINT_TELEA."""
    out_dir = ensure_writable_dir(out_dir)
    for img_path, mask_path in zip(list_images(masked_dir), list_images(mask_dir)):
        rgb = np.array(Image.open(img_path).convert("RGB"))
        hole = (np.array(Image.open(mask_path).convert("L")) < 128).astype(np.uint8)
        filled = cv2.inpaint(rgb, hole, radius, cv2.INPAINT_TELEA)
        Image.fromarray(filled).save(out_dir / img_path.name)
    return out_dir


def run(masked_dir: str | Path, out: str | Path, device=None) -> dict:
    masked_dir, out = Path(masked_dir), Path(out)
    stats = out / "gt_stats.npz"
    if not stats.exists():
        save_statistics(masked_dir / "gt", stats, device)
    telea = telea_inpaint(masked_dir / "masked_image", masked_dir / "mask64", out / "telea")
    return {"FID masked input (grey holes)": calculate_fid_given_paths(masked_dir / "masked_image", stats, device),
            "FID cv2.inpaint Telea": calculate_fid_given_paths(telea, stats, device)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masked-dir", required=True, help="folder with masked_image/, mask64/ and gt/")
    p.add_argument("--out", default="runs/classical_baseline")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    for name, value in run(args.masked_dir, args.out, args.device).items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
