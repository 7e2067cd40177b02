"""Stage-1 quality: reconstruction FID, PSNR and codebook usage of VQGAN checkpoints, on the
first N images of a folder (the 747 val images of the quality table by default).

    python training_vqgan.py ... --out runs/vqgan --keep-every 500   # step_*.pt along the run
    python benchmarks/tokenizer_quality.py --ckpts runs/vqgan/step_*.pt \\
        --images ../shared/datasets/cat_face/val --n 747 --out runs/bench/tokenizer

rFID compares each checkpoint's reconstructions with their originals (statistics of the
originals computed once); lower is better. Prints one markdown row per checkpoint, sorted
by training step, so a list of checkpoints along a run gives the curve against steps; with
two or more steps it also draws it, rFID and PSNR against steps, in <out>/curve.png.

With --masked-dir (a masked set: gt/, masked_image/, mask64/, e.g. the suite's masked val
set from `python -m data.masks --src .../val --out masked --kind lab --seed 0 --limit 747`),
the originals are its gt/ images and each row also scores the floors of inpainting's
outputs under its masks, with no transformer: a plain checkpoint's reconstructions
Poisson-blended into the known pixels (`--composite poisson`), and a conditional
checkpoint's (training_conditional.py) own decode given the known pixels.

    python benchmarks/tokenizer_quality.py --ckpts <vqgan>/last.pt <conditional>/last.pt \\
        --masked-dir masked --out runs/bench/floors
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import matplotlib
from PIL import Image

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import normalization  # noqa: E402
from data.sources import image_tensor  # noqa: E402
from metrics.fid import calculate_fid_given_paths, save_statistics  # noqa: E402
from benchmarks.region_psnr import load_known  # noqa: E402
from models.VQGAN_Transformer import load_vqgan  # noqa: E402
from pipeline import composite_folder, write_reconstructions  # noqa: E402
from runtime.checkpoints import load_checkpoint  # noqa: E402
from runtime.precision import resolve_device  # noqa: E402
from training_vqgan import evaluate  # noqa: E402
from utils import UserError, ensure_writable_dir  # noqa: E402


def run(ckpts: list[Path], images_dir: Path, n: int, out: Path, device,
        masked: Path | None = None) -> list[dict]:
    out = ensure_writable_dir(out)
    images = image_tensor(str(masked / "gt" if masked else images_dir), 64, "val")[:n]
    known = load_known(masked / "mask64")[:n] if masked else None
    if known is not None and len(known) != len(images):
        raise UserError(f"{masked}: {len(known)} masks for {len(images)} ground-truth images")
    originals = ensure_writable_dir(out / "originals")
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im).save(originals / f"image_{i:03d}.png")
    stats = out / "originals_stats.npz"
    save_statistics(originals, stats, device)
    rows = []
    steps = {ckpt: load_checkpoint(ckpt).get("step") for ckpt in ckpts}
    for ckpt in sorted(ckpts, key=lambda c: steps[c] or 0):  # rows print as a curve against steps
        step = steps[ckpt]
        vq, cfg = load_vqgan(None, ckpt)
        vq = vq.to(device)
        mean, std = normalization(cfg, "test")
        metrics = evaluate(vq, images, mean, std, device)
        rec = write_reconstructions(vq, images, out / "rec", mean, std)
        row = {"ckpt": str(ckpt), "step": step, "rfid": calculate_fid_given_paths(rec, stats, device),
               "psnr": metrics["val_psnr"], "usage": metrics["val_usage"],
               "perplexity": metrics["val_perplexity"], "rfid_poisson": None, "rfid_conditional": None}
        if known is not None and cfg.get("conditional"):
            cond = write_reconstructions(vq, images, out / "rec_conditional", mean, std, known=known)
            row["rfid_conditional"] = calculate_fid_given_paths(cond, stats, device)
            shutil.rmtree(cond)
        elif known is not None:
            blended = composite_folder(rec, masked, out / "rec_poisson", "poisson")
            row["rfid_poisson"] = calculate_fid_given_paths(blended, stats, device)
            shutil.rmtree(blended)
        shutil.rmtree(rec)
        rows.append(row)
        print(" | ".join(["", str(ckpt), str(step), f"{row['rfid']:.2f}", f"{row['psnr']:.2f}",
                          f"{100 * row['usage']:.1f}%", f"{row['perplexity']:.0f}",
                          *(f"{row[k]:.2f}" if row[k] is not None else "-"
                            for k in ("rfid_poisson", "rfid_conditional")), ""]).strip(), flush=True)
    if sum(r["step"] is not None for r in rows) >= 2:
        print(f"curve: {plot_curve(rows, out / 'curve.png')}")
    return rows


def plot_curve(rows: list[dict], path: Path) -> Path:
    """rFID (left axis) and PSNR (right axis) against the training step, of the rows that
    have a step."""
    rows = [r for r in rows if r["step"] is not None]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["rfid"] for r in rows], marker="o", color="C0")
    ax.set_xlabel("training step")
    ax.set_ylabel("rFID (lower is better)", color="C0")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(steps, [r["psnr"] for r in rows], marker="s", color="C1")
    right.set_ylabel("PSNR, dB (higher is better)", color="C1")
    ax.set_title("Stage 1 against its steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", required=True)
    p.add_argument("--images", default="../shared/datasets/cat_face/val")
    p.add_argument("--n", type=int, default=747)
    p.add_argument("--masked-dir", default=None,
                   help="a masked set (gt/, masked_image/, mask64/): its gt/ are the originals, and "
                        "rows add the Poisson-blended and conditional floors under its masks")
    p.add_argument("--out", default="runs/bench/tokenizer")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    print("| checkpoint | step | rFID | PSNR (dB) | codebook usage | perplexity | rFID Poisson-blended "
          "| rFID conditional |\n|---|---|---|---|---|---|---|---|")
    masked = Path(args.masked_dir) if args.masked_dir else None
    return run(list(map(Path, args.ckpts)), Path(args.images), args.n, Path(args.out),
               resolve_device(args.device), masked)


if __name__ == "__main__":
    main()
