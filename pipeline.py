"""The whole suite in one command: train, mask, inpaint, score, report.

    python pipeline.py                                   # built-in generated data, CPU, minutes
    python pipeline.py --data ../shared/datasets/cat_face --maskgit-config configs/MaskGit.yml
    python pipeline.py --maskgit-config configs/MaskGit.yml --vqgan-ckpt checkpoints/VQGAN.pt \\
        --transformer-ckpt runs/lab/transformer/best.pt --masked-dir ../lab/test_set

Stages (each can be skipped by pointing it at existing files):
  1. VQGAN          training_vqgan       -> <out>/vqgan/best.pt        (--vqgan-ckpt skips)
  2. transformer    training_transformer -> <out>/transformer/best.pt  (--transformer-ckpt skips)
  3. masked set     make_masked_set      -> <out>/masked/              (--masked-dir skips)
  4. inpainting     inpaint_dataset      -> <out>/inpainting/
  5. FID of the inpainted images against the ground truth, and of the VQGAN's
     reconstructions of the ground truth (the floor that stage 2 cannot beat)
  6. <out>/report.html and <out>/results.md
With --conditional-vqgan CKPT (training_conditional.py) stage 4 decodes through that
mask-conditioned VQGAN (nothing pasted), and stages 5-6 add the plain decode of the same
tokens, it Poisson-blended, and the conditional VQGAN's own reconstruction floor; the page
then shows masked input | plain decode | conditional decode | Poisson composite | ground truth.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

import training_transformer
import training_vqgan
from data import (MaskedImageDataset, denormalize, list_images, make_masked_set,
                  make_synthetic_images, normalization, normalize, to_uint8)
from data.images import open_image, to_rgb
from inpainting import add_composite_arg, add_conditional_arg, add_token_rule_args, load_maskgit, inpaint_dataset
from metrics.fid import calculate_fid_given_paths, load_images, save_statistics
from models.compositing import composite
from models.VQGAN import read_conditional_checkpoint
from models.schedules import gamma_func
from report import write_report
from runtime.precision import CHOICES as PRECISIONS, resolve_device, resolve_precision
from utils import (REPO_ROOT, UserError, check_positive, ensure_writable_dir, load_config,
                   resolve_path, run_cli)

# minutes per training stage on the generated data: a safety stop only, above what the tiny
# configs' step counts take on a 2-core AVX2 CPU, so the demo's result is the same everywhere
DEMO_TIME_BUDGET = 4.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="every output lands here")
    p.add_argument("--data", default=None,
                   help="folder with train/ and val/ image subfolders (default: generated data)")
    p.add_argument("--maskgit-config", default=str(REPO_ROOT / "configs/MaskGit_tiny.yml"))
    p.add_argument("--vqgan-config", default=None,
                   help="default: the VQ_config_path named by the MaskGit config")
    p.add_argument("--vqgan-ckpt", default=None, help="skip stage 1 (ours, or the lab's plain VQGAN.pt)")
    p.add_argument("--transformer-ckpt", default=None, help="skip stages 1 and 2")
    p.add_argument("--masked-dir", default=None,
                   help="folder with masked_image/, mask64/ (and gt/) instead of generating one")
    p.add_argument("--gt", default=None, help="ground truth for FID (folder/.csv/.npz); "
                                              "default: the masked set's gt/")
    p.add_argument("--vqgan-epochs", type=int, help="overrides the VQGAN config's training.epochs")
    p.add_argument("--transformer-epochs", type=int, help="overrides train_param.epochs")
    p.add_argument("--partial", type=float, default=None, help="train on this fraction of the data")
    p.add_argument("--time-budget", type=float, default=None,
                   help=f"safety stop, minutes per training stage (default: {DEMO_TIME_BUDGET} on "
                        f"generated data, unlimited with --data); the configs' max_steps set the length")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="inpainting precision; auto: bf16 where the hardware runs it natively, "
                        "else fp32 (training uses its configs' precision)")
    p.add_argument("--num-test", type=int, default=100, help="images to mask for the test set")
    p.add_argument("--mask-kind", default="lab", choices=["lab", "box", "outpaint"])
    p.add_argument("--total-iter", type=int, default=7)
    p.add_argument("--mask-func", default=None, help="decoding schedule (default: the config's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="token sampling temperature, 0 = most likely token (default: the config's)")
    p.add_argument("--batch-size", type=int, default=32, help="inpainting batch")
    p.add_argument("--save-steps", type=int, default=4, help="step pictures for the first N images")
    p.add_argument("--examples", type=int, default=8, help="examples shown on the results page")
    p.add_argument("--seed", type=int, default=0, help="masks and decoding")
    add_composite_arg(p, "also score inpainting and floor with the known pixels put back")
    add_conditional_arg(p)
    add_token_rule_args(p)
    return p.parse_args(argv)


def best_checkpoint(folder: Path) -> Path:
    """best.pt, or last.pt when a time budget stopped the first epoch before any best."""
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"training wrote no checkpoint to {folder}; see the messages above")


@torch.no_grad()
def write_reconstructions(vqgan, images: torch.Tensor, out_dir, mean, std,
                          batch_size: int = 64, known: torch.Tensor | None = None) -> Path:
    """uint8 images (N, 3, R, R) -> out_dir/image_{i:03d}.png, each decoded from its own
    VQGAN tokens (through a conditional VQGAN given the known pixels of `known` (N, 1, R, R)).
    Their FID against the originals is the floor for inpainting: the transformer only
    chooses tokens, the VQGAN draws them."""
    out_dir = ensure_writable_dir(out_dir)
    device = next(vqgan.parameters()).device
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device).float() / 255, mean, std)
        k = None if known is None else known[start:start + batch_size].to(device)
        rec = to_uint8(denormalize(vqgan(x, k)[0], mean, std))  # (B, R, R, 3)
        for i, im in enumerate(rec, start):
            Image.fromarray(im).save(out_dir / f"image_{i:03d}.png")
    return out_dir


def resolved_config(args, vq_ckpt: Path | None) -> dict:
    """--maskgit-config with absolute VQGAN paths (--vqgan-config and `vq_ckpt` win over
    the config's own), so no stage depends on the cwd."""
    cfg = load_config(args.maskgit_config)
    vq = cfg["model_param"]["VQ_Configs"]
    vq_config = Path(args.vqgan_config) if args.vqgan_config else resolve_path(vq["VQ_config_path"], REPO_ROOT)
    if vq_ckpt is None and vq["VQ_CKPT_path"]:
        vq_ckpt = resolve_path(vq["VQ_CKPT_path"], REPO_ROOT)
    vq.update(VQ_config_path=str(vq_config.resolve()),
              VQ_CKPT_path=str(vq_ckpt.resolve()) if vq_ckpt else None)
    return cfg


def train_stages(args, out: Path, timings: dict) -> tuple[Path, Path]:
    """Stages 1 and 2 as needed; returns (transformer checkpoint, resolved MaskGit config)."""
    vq_ckpt = Path(args.vqgan_ckpt) if args.vqgan_ckpt else None
    budget = args.time_budget if args.time_budget is not None else (0 if args.data else DEMO_TIME_BUDGET)
    common = (["--device", args.device] if args.device else []) + ["--time-budget", str(budget)]
    common += ["--partial", str(args.partial)] if args.partial else []
    split = lambda s: str(Path(args.data) / s)

    if vq_ckpt is None and not args.transformer_ckpt:
        t = time.time()
        vq_config = resolved_config(args, None)["model_param"]["VQ_Configs"]["VQ_config_path"]
        data = ["--data", split("train"), "--val-data", split("val")] if args.data else []
        epochs = ["--epochs", str(args.vqgan_epochs)] if args.vqgan_epochs else []
        training_vqgan.main(
            ["--config", vq_config, "--out", str(out / "vqgan")] + data + epochs + common)
        vq_ckpt = best_checkpoint(out / "vqgan")
        timings["train VQGAN"] = time.time() - t

    config = out / "maskgit_config.yml"
    config.write_text(yaml.safe_dump(resolved_config(args, vq_ckpt), sort_keys=False))
    if args.transformer_ckpt:
        return Path(args.transformer_ckpt), config
    t = time.time()
    data = ["--train_d_path", split("train"), "--val_d_path", split("val")] if args.data else []
    epochs = ["--epochs", str(args.transformer_epochs)] if args.transformer_epochs else []
    training_transformer.main(
        ["--MaskGitConfig", str(config), "--checkpoint-path", str(out / "transformer"),
         "--token-cache", str(out / "token_cache")] + data + epochs + common)
    timings["train transformer"] = time.time() - t
    return best_checkpoint(out / "transformer"), config


def masked_test_set(args, out: Path, resolution: int) -> Path:
    """The given --masked-dir, or a new one from the val images / generated test images."""
    if args.masked_dir:
        return Path(args.masked_dir)
    src = Path(args.data) / "val" if args.data else \
        make_synthetic_images(args.num_test, resolution, seed=0, split="test")
    return make_masked_set(src, out / "masked", args.mask_kind, args.seed, args.num_test, resolution)


def composite_folder(images_dir: Path, masked: Path, out_dir, mode: str) -> Path:
    """images_dir/image_{i:03d}.png composited (`mode`: paste / poisson) with the known
    pixels of the masked set's image i, as `inpainting.py --composite` does; for results
    and floor alike."""
    out_dir = ensure_writable_dir(out_dir)
    to01 = lambda file: torch.from_numpy(np.array(to_rgb(open_image(file)))).movedim(-1, 0)[None] / 255
    pairs = zip(list_images(masked / "masked_image"), list_images(masked / "mask64"))
    for i, (masked_file, mask_file) in enumerate(pairs):
        known = torch.from_numpy(np.array(open_image(mask_file).convert("L")) >= 128)  # (R, R)
        image = composite(to01(images_dir / f"image_{i:03d}.png"), to01(masked_file),
                          known[None, None], mode)  # (1, 3, R, R)
        Image.fromarray(to_uint8(image)[0]).save(out_dir / f"image_{i:03d}.png")
    return out_dir


def composite_label(mode: str) -> str:
    return {"paste": "known pixels pasted back", "poisson": "Poisson-blended into the known pixels"}[mode]


def fids(model, gt: Path | None, results: Path, composited: Path | None, masked: Path, out: Path,
         device, composite_mode: str | None) -> dict[str, float | None]:
    """FID of the inpainting and of the VQGAN reconstruction floor against `gt`; with
    `composite_mode`, also of `composited` (the results composited that way) and of the
    floor composited the same way."""
    names = ["FID inpainting", "FID VQGAN reconstruction (floor)"]
    if composite_mode:
        names += [f"{name}, {composite_label(composite_mode)}" for name in names]
    if gt is None:
        print("no ground truth (no gt/ in the masked set and no --gt): FID skipped")
        return dict.fromkeys(names)
    stats = gt
    if gt.suffix != ".npz":  # Inception features of the ground truth, computed once for every FID
        stats = out / "gt_stats.npz"
        save_statistics(gt, stats, device)
    folders = [results, None]
    if gt.suffix != ".npz":  # statistics alone cannot be reconstructed
        mean, std = normalization(model.vq_config, "test")
        folders[1] = write_reconstructions(model.vqgan, load_images(gt), out / "reconstructions",
                                           mean, std)
    if composite_mode:
        floor = folders[1]
        if floor:
            floor = composite_folder(floor, masked, out / f"{floor.name}_{composite_mode}", composite_mode)
        folders += [composited, floor]
    return {name: calculate_fid_given_paths(f, stats, device) if f else None
            for name, f in zip(names, folders)}


def conditional_fids(model, gt: Path | None, plain: Path, masked: Path, known: torch.Tensor,
                     out: Path, device) -> tuple[dict[str, float | None], Path]:
    """With a conditional decoder: FID of the plain decode of the same tokens (`plain`), of
    it Poisson-blended (the best output without the conditional decoder), and of the
    conditional VQGAN's reconstructions of the ground truth under the test masks `known`
    (its floor). Returns (those, the Poisson-blended folder). Call after `fids`, which
    writes the ground truth's statistics."""
    blended = composite_folder(plain, masked, out / f"{plain.name}_poisson", "poisson")
    names = ["FID plain decode", f"FID plain decode, {composite_label('poisson')}",
             "FID conditional VQGAN reconstruction (floor)"]
    if gt is None:
        return dict.fromkeys(names), blended
    stats, floor = gt, None
    if gt.suffix != ".npz":
        stats, images = out / "gt_stats.npz", load_images(gt)
        if len(images) == len(known):  # the masked set's own ground truth, image for image
            mean, std = normalization(model.vq_config, "test")
            floor = write_reconstructions(model.conditional_vqgan, images,
                                          out / "reconstructions_conditional", mean, std, known=known)
    return {name: calculate_fid_given_paths(f, stats, device) if f else None
            for name, f in zip(names, (plain, blended, floor))}, blended


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.mask_func:
        gamma_func(args.mask_func)  # an unknown schedule fails now, not after training
    if args.temperature is not None:
        check_positive({"--temperature": args.temperature}, strict=False)
    if args.data and not all((Path(args.data) / s).is_dir() for s in ("train", "val")):
        raise UserError(f"--data {args.data} must hold train/ and val/ image folders")
    if args.conditional_vqgan:
        read_conditional_checkpoint(args.conditional_vqgan)  # not a conditional one: fail before training
    out = ensure_writable_dir(args.out)
    device = resolve_device(args.device)
    timings: dict[str, float] = {}
    start = time.time()

    tr_ckpt, config = train_stages(args, out, timings)
    precision = resolve_precision(args.precision, device, "inpainting precision")
    model = load_maskgit(tr_ckpt, config, device, precision, args.conditional_vqgan,
                         hole_fill=args.hole_fill, min_known=args.min_known,
                         reencode=args.reencode)
    res = model.vq_config["img_resolution"]

    t = time.time()
    masked = masked_test_set(args, out, res)
    mean, std = normalization(model.vq_config, "test")
    dataset = MaskedImageDataset(masked / "masked_image", masked / "mask64", res, mean, std)
    inpainted = out / "inpainting"
    results = inpaint_dataset(model, dataset, inpainted, args.total_iter, args.mask_func,
                              batch_size=args.batch_size, seed=args.seed, precision=precision,
                              save_steps=args.save_steps, temperature=args.temperature,
                              conditional=bool(args.conditional_vqgan))
    timings["mask + inpaint"] = time.time() - t

    t = time.time()
    gt = Path(args.gt) if args.gt else (masked / "gt" if (masked / "gt").is_dir() else None)
    composited = None
    if args.composite:
        composited = composite_folder(results, masked, out / f"{results.name}_{args.composite}",
                                      args.composite)
    scores = fids(model, gt, results, composited, masked, out, device, args.composite)
    extra, blended = {}, None
    if args.conditional_vqgan:  # the result is the conditional decode
        scores = {k.replace("FID inpainting", "FID inpainting (conditional decode)"): v
                  for k, v in scores.items()}
        extra, blended = conditional_fids(model, gt, inpainted / "plain_results", masked, dataset.known,
                                          out, device)
    timings["FID"] = time.time() - t
    timings["total"] = time.time() - start

    names = [p.name for p in dataset.masked_paths[:args.examples]]
    truth = lambda n: gt / n if gt is not None and (gt / n).is_file() else None
    columns = ("masked input", "result", "ground truth")
    examples = [(masked / "masked_image" / n, (composited or results) / f"image_{i:03d}.png", truth(n))
                for i, n in enumerate(names)]
    if args.conditional_vqgan:
        columns = ("masked input", "plain decode", "conditional decode", "plain decode, Poisson-blended",
                   "ground truth")
        examples = [(masked / "masked_image" / n, inpainted / "plain_results" / f"image_{i:03d}.png",
                     results / f"image_{i:03d}.png", blended / f"image_{i:03d}.png", truth(n))
                    for i, n in enumerate(names)]
    steps = (inpainted / "imga" / "image_000.png", inpainted / "mask_scheduling" / "image_000.png")
    settings = {"data": args.data or "generated shapes", "transformer checkpoint": tr_ckpt,
                "VQGAN checkpoint": model.vq_ckpt, "masked set": masked, "test images": len(dataset),
                "mask kind": "given" if args.masked_dir else args.mask_kind,
                "total iterations": args.total_iter,
                "mask function": args.mask_func or model.gamma.__name__.removeprefix("gamma_"),
                "sampling temperature": model.decoding(args.temperature)[0],
                "hole fill before encoding": model.hole_fill, "token kept at known fraction": model.min_known,
                "re-encodes after decoding": model.reencode,
                "seed": args.seed, "device": device}
    if args.conditional_vqgan:
        settings["conditional VQGAN (decodes the result)"] = args.conditional_vqgan
    report = write_report(out, {**scores, **extra}, settings, timings, examples,
                          steps if steps[0].is_file() else None, columns=columns)

    print(f"\ncheckpoints: {tr_ckpt} (VQGAN {model.vq_ckpt})\nmasked set:  {masked}\n"
          f"inpainted:   {results}\nreport:      {report}\nsummary:     {out / 'results.md'}")
    for name, value in {**scores, **extra}.items():
        print(f"{name}: {'n/a' if value is None else f'{value:.4f}'}")
    print(f"total time: {timings['total'] / 60:.1f} min")
    fid_raw, fid_floor, *fid_composite = scores.values()  # in the order fids() names them
    fid_composite, fid_composite_floor = fid_composite or (None, None)
    return {"fid_inpainting": fid_raw, "fid_reconstruction": fid_floor,
            "fid_inpainting_composite": fid_composite, "fid_reconstruction_composite": fid_composite_floor,
            "fid_plain": extra.get("FID plain decode"),
            "fid_plain_poisson": extra.get(f"FID plain decode, {composite_label('poisson')}"),
            "fid_reconstruction_conditional": extra.get("FID conditional VQGAN reconstruction (floor)"),
            "report": report, "transformer_ckpt": tr_ckpt, "masked_dir": masked, "results": results}


if __name__ == "__main__":
    run_cli(main)
