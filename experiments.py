"""Sweep the decoding settings of a trained MaskGIT: mask function x total iterations x sweet
spot (the lab's table), optionally x sampling temperature x choice temperature.

    python experiments.py --load-transformer-ckpt-path runs/demo/transformer/best.pt \\
        --masked-dir runs/demo/masked --mask-funcs cosine linear square \\
        --total-iters 7 8 10 12 --sweet-spots -1 5 --out runs/sweep --seed 0

For every setting the masked set is inpainted into <out>/<setting>/ and scored by FID
against the ground truth (its Inception statistics are computed once, <out>/gt_stats.npz).
Writes <out>/results.csv, results.md, fid_vs_iter.png and decoding_<schedule>.png (the
step-by-step decoding of image 0). Decoding is seeded per image, so a rerun with the
same seed reproduces the table exactly. A sweet spot >= total iterations stops nowhere,
so it is skipped as a duplicate of -1. `--temperatures` / `--choice-temperatures` add
those axes (default: the checkpoint config's values, not swept). `--conditional-vqgan CKPT`
decodes every setting through that mask-conditioned VQGAN (training_conditional.py).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
from PIL import Image

from data import MaskedImageDataset, normalization
from inpainting import (add_composite_arg, add_conditional_arg, add_token_rule_args, check_schedule_args,
                        inpaint_dataset, load_maskgit)
from metrics.fid import calculate_fid_given_paths, save_statistics
from models.schedules import gamma_func
from runtime.precision import CHOICES as PRECISIONS, resolve_device, resolve_precision
from utils import UserError, check_positive, ensure_writable_dir, run_cli

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

FIELDS = ["mask_func", "total_iter", "sweet_spot", "temperature", "choice_temperature", "fid"]
LINE_STYLES = ["-", "--", ":", "-."]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load-transformer-ckpt-path", required=True)
    p.add_argument("--MaskGitConfig", default=None, help="only for checkpoints that carry no config")
    p.add_argument("--masked-dir", required=True, help="folder with masked_image/, mask64/ and gt/")
    p.add_argument("--gt", default=None, help="ground truth (folder/.csv/.npz); default <masked-dir>/gt")
    p.add_argument("--mask-funcs", nargs="+", default=["cosine", "linear", "square"])
    p.add_argument("--total-iters", nargs="+", type=int, default=[7, 8, 10, 12])
    p.add_argument("--sweet-spots", nargs="+", type=int, default=[-1])
    p.add_argument("--temperatures", nargs="+", type=float, default=[None],
                   help="token sampling temperatures, 0 = most likely token (default: the config's)")
    p.add_argument("--choice-temperatures", nargs="+", type=float, default=[None],
                   help="Gumbel noise scales on the confidence (default: the config's)")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where the hardware runs it natively, else fp32")
    add_composite_arg(p, "score with the known pixels put back")
    add_conditional_arg(p)
    add_token_rule_args(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    return p.parse_args(argv)


class Setting(NamedTuple):
    mask_func: str
    total_iter: int
    sweet_spot: int
    temperature: float | None = None  # None: the model's own
    choice_temperature: float | None = None

    @property
    def name(self) -> str:
        return (f"{self.mask_func}_iter{self.total_iter}"
                + ("" if self.sweet_spot == -1 else f"_sweet{self.sweet_spot}")
                + ("" if self.temperature is None else f"_temp{self.temperature:g}")
                + ("" if self.choice_temperature is None else f"_choice{self.choice_temperature:g}"))


def sweep_settings(mask_funcs, total_iters, sweet_spots, temperatures=(None,),
                   choice_temperatures=(None,)) -> list[Setting]:
    """Every combination, minus sweet spots that never stop early."""
    for f in mask_funcs:
        gamma_func(f)  # unknown names fail before any work
    for t in total_iters:
        for s in sweet_spots:
            check_schedule_args(t, s)
    check_positive({f"{flag} {v}": v for flag, values in (("--temperatures", temperatures),
                                                           ("--choice-temperatures", choice_temperatures))
                    for v in values if v is not None}, strict=False)
    return [Setting(f, t, s, temp, choice) for f in mask_funcs for t in total_iters
            for s in dict.fromkeys(sweet_spots) if s == -1 or s < t
            for temp in dict.fromkeys(temperatures) for choice in dict.fromkeys(choice_temperatures)]


def decoding_figure(setting_dir: Path, path: Path) -> Path:
    """Decoded images per step (imga/, after the masked input) above the token masks
    (mask_scheduling/), aligned so each step's mask sits under its image."""
    with Image.open(setting_dir / "imga" / "image_000.png") as im:
        images = np.asarray(im.convert("RGB"))  # (R, (T+1)*R, 3)
    with Image.open(setting_dir / "mask_scheduling" / "image_000.png") as im:
        masks = np.asarray(im.convert("RGB"))   # (R, T*R, 3)
    res = images.shape[0]
    grey = np.full((res, res, 3), 128, np.uint8)  # no token mask belongs under the input panel
    Image.fromarray(np.concatenate([images, np.concatenate([grey, masks], 1)], 0)).save(path)
    return path


def plot_fid(rows: list[dict], path: Path) -> Path:
    """FID against total iterations: one colour per schedule, one line style per other
    setting (sweet spot, temperatures)."""
    others = lambda r: (r["sweet_spot"], r["temperature"], r["choice_temperature"])
    funcs = list(dict.fromkeys(r["mask_func"] for r in rows))
    variants = list(dict.fromkeys(others(r) for r in rows))
    varying = [len({v[i] for v in variants}) > 1 for i in range(3)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in funcs:
        for v in variants:
            pts = sorted((r["total_iter"], r["fid"]) for r in rows if r["mask_func"] == f and others(r) == v)
            if pts:
                parts = [f] + [f"{label} {value:g}" for label, value, show in
                               zip(("sweet spot", "temp", "choice"), v, varying) if show and value != -1]
                ax.plot(*zip(*pts), marker="o", color=f"C{funcs.index(f)}",
                        linestyle=LINE_STYLES[variants.index(v) % len(LINE_STYLES)], label=", ".join(parts))
    ax.set_xticks(sorted({r["total_iter"] for r in rows}))
    ax.set_xlabel("total iterations T")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("Inpainting FID vs decoding steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_tables(rows: list[dict], out: Path) -> None:
    """results.csv and results.md; FIDs rounded to 4 decimals."""
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({**r, "fid": f"{r['fid']:.4f}"} for r in rows)
    md = ("| mask function | total iter | sweet spot | temperature | choice temperature | FID |\n"
          "|---|---|---|---|---|---|\n")
    md += "".join(f"| {r['mask_func']} | {r['total_iter']} | {r['sweet_spot']} | {r['temperature']:g} "
                  f"| {r['choice_temperature']:g} | {r['fid']:.4f} |\n" for r in rows)
    (out / "results.md").write_text(md)


def run_sweep(model, dataset, gt_stats: Path, out: Path, settings: list[Setting], seed: int = 0,
              batch_size: int = 32, precision: str = "fp32", composite: str | None = None,
              conditional: bool = False) -> list[dict]:
    """Inpaint and score every setting; returns one row per setting (FIELDS). `conditional`
    decodes through the model's attached conditional VQGAN."""
    device = next(model.transformer.parameters()).device
    rows = []
    for st in settings:
        results = inpaint_dataset(model, dataset, out / st.name, st.total_iter, st.mask_func,
                                  st.sweet_spot, batch_size, seed, precision, save_steps=1,
                                  composite=composite, temperature=st.temperature,
                                  choice_temperature=st.choice_temperature, conditional=conditional)
        fid = calculate_fid_given_paths(results, gt_stats, device)
        temperature, choice = model.decoding(st.temperature, st.choice_temperature)
        rows.append({**st._asdict(), "temperature": temperature, "choice_temperature": choice, "fid": fid})
        print(f"{st.name}: FID {fid:.4f}")
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    settings = sweep_settings(args.mask_funcs, args.total_iters, args.sweet_spots,
                              args.temperatures, args.choice_temperatures)
    if not settings:
        raise UserError("every sweet spot is >= every total iteration; nothing to run")
    masked = Path(args.masked_dir)
    gt = Path(args.gt) if args.gt else masked / "gt"
    if not gt.exists():
        raise UserError(f"ground truth {gt} not found; pass --gt or use a masked set with gt/")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    out = ensure_writable_dir(args.out)
    model = load_maskgit(args.load_transformer_ckpt_path, args.MaskGitConfig, device, precision,
                         args.conditional_vqgan, hole_fill=args.hole_fill,
                         min_known=args.min_known, reencode=args.reencode)
    mean, std = normalization(model.vq_config, "test")
    dataset = MaskedImageDataset(masked / "masked_image", masked / "mask64",
                                 model.vq_config["img_resolution"], mean, std)
    gt_stats = gt
    if gt.suffix != ".npz":  # the ground truth's Inception statistics, once for the whole sweep
        gt_stats = out / "gt_stats.npz"
        save_statistics(gt, gt_stats, device)

    rows = run_sweep(model, dataset, gt_stats, out, settings, args.seed, args.batch_size,
                     precision, args.composite, bool(args.conditional_vqgan))
    write_tables(rows, out)
    plot_fid(rows, out / "fid_vs_iter.png")
    for mask_func in dict.fromkeys(args.mask_funcs):
        # the longest full decoding of each schedule shows the most steps
        st = max((st for st in settings if st.mask_func == mask_func),
                 key=lambda st: (st.sweet_spot == -1, st.total_iter))
        decoding_figure(out / st.name, out / f"decoding_{mask_func}.png")
    print(f"\n{(out / 'results.md').read_text()}\nwrote {out / 'results.csv'}, "
          f"{out / 'fid_vs_iter.png'} and decoding_<schedule>.png")
    return rows


if __name__ == "__main__":
    run_cli(main)
