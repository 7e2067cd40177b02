"""Does bf16 move the score? Inpaint one masked set with a trained model in fp32 and in
bf16 (same masks, same per-image seeds) and compare their FIDs, raw and Poisson-blended
into the known pixels, and their speed. The target is bf16 within 2% of fp32.

    python benchmarks/bench_precision.py --ckpt runs/catface/transformer/best.pt \\
        --masked-dir runs/catface/masked_val
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, table  # noqa: E402
from data import MaskedImageDataset, normalization  # noqa: E402
from inpainting import inpaint_dataset, load_maskgit  # noqa: E402
from metrics.fid import calculate_fid_given_paths, save_statistics  # noqa: E402
from pipeline import composite_folder  # noqa: E402
from runtime.precision import resolve_device  # noqa: E402
from utils import ensure_writable_dir  # noqa: E402


def run(ckpt, masked_dir, out, device=None, total_iter: int = 7, batch_size: int = 32) -> list[Row]:
    device = resolve_device(device)
    masked, out = Path(masked_dir), ensure_writable_dir(out)
    model = load_maskgit(ckpt, device=device)
    res = model.vq_config["img_resolution"]
    dataset = MaskedImageDataset(masked / "masked_image", masked / "mask64", res,
                                 *normalization(model.vq_config, "test"))
    stats = out / "gt_stats.npz"
    save_statistics(masked / "gt", stats, device)
    fid, speed = {}, {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        results = inpaint_dataset(model, dataset, out / precision, total_iter,
                                  batch_size=batch_size, precision=precision, save_steps=0)
        speed[precision] = len(dataset) / (time.perf_counter() - start)
        blended = composite_folder(results, masked, out / f"{precision}_poisson", "poisson")
        fid[precision] = [calculate_fid_given_paths(f, stats, device) for f in (results, blended)]
        print(f"{precision}: FID {fid[precision][0]:.4f}, Poisson-blended {fid[precision][1]:.4f}, "
              f"{speed[precision]:.2f} images/s", flush=True)
    rows = [Row(f"FID bf16 vs fp32, {what} ({len(dataset)} images, T={total_iter})",
                fid["bf16"][i], fid["fp32"][i], "FID", higher=False,
                note=f"{100 * (fid['bf16'][i] / fid['fp32'][i] - 1):+.2f}% (target within 2%)",
                precision="bf16")
            for i, what in enumerate(("raw", "Poisson-blended"))]
    rows.append(Row(f"inpaint trained model, batch {batch_size}", speed["bf16"], speed["fp32"],
                    "images/s", note="bf16 vs fp32, transformer + VQGAN, no step pictures",
                    precision="bf16"))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="trained transformer checkpoint")
    p.add_argument("--masked-dir", required=True, help="folder with masked_image/, mask64/ and gt/")
    p.add_argument("--out", default="runs/bench/precision")
    p.add_argument("--device", default=None)
    p.add_argument("--total-iter", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    print(table(run(args.ckpt, args.masked_dir, args.out, args.device, args.total_iter, args.batch_size)))


if __name__ == "__main__":
    main()
