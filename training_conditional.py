"""Stage 1b: fine-tune a trained VQGAN's decoder side into a mask-conditioned decoder.

    python training_conditional.py --config configs/VQGAN_catface_conditional.yml \\
        --init <our VQGAN checkpoint, e.g. .../vqgan/best.pt> \\
        --data ../shared/datasets/cat_face/train --val-data ../shared/datasets/cat_face/val
    python training_conditional.py ... --init checkpoints/VQGAN.pt --vqgan-config configs/VQGAN.yml
    torchrun --nproc_per_node=2 training_conditional.py ...                  # data parallel

The model is the --init VQGAN (our checkpoints carry their config; the lab's plain VQGAN.pt
is built from --vqgan-config) with `conditional: true`: the branch of
models/VQGAN/conditional.py, whose new `cond.*` weights start where the output equals the
plain decoder's. The encoder, quant_conv and codebook are frozen, so token ids, token caches
and stage-2 checkpoints stay valid; the decoder, post_quant_conv and the branch train with
the stage-1 losses (L1 + optional L2, with the hole pixels weighted by `hole_weight`; the
codebook term (constant here); from `disc_start` the adaptively weighted hinge PatchGAN;
no FID network in any loss). With `fuse_pixels` the branch also fuses the masked image
into the output, so the decoder can keep the known pixels exactly; with `hole_guide` it reads
the holes filled from the known pixels around them, and fuses into the hole cells too; with
`hole_residual` the output's holes read the decoder's mismatch with the known pixels, filled
into them (the correction a Poisson blend adds). With
`token_noise` p, each token of a partly known cell is a random code with probability p, as
the transformer's guesses there can be at inpainting time
(models/VQGAN/conditional.scramble_partly_known). Every
image gets a mask from the config's `masks` mix (data/mask_mix.py: lab-like, box,
outpaint, all-hole, hole-free). Validation decodes the val images' own tokens under the
lab-like masks `python -m data.masks --kind lab --seed 0` gives them, and logs PSNR of the
whole image, of the known pixels, of the holes, under an all-hole mask (the decoder
alone), and of the known pixels when every partly known cell's token is random (the
worst the transformer can guess there); metrics.jsonl's step 0 is the plain decoder. Counted in steps
(`training.max_steps`), warm-up and cosine decay as stage 1. Writes <out>/last.pt and
<out>/best.pt (best val PSNR) atomically; --resume continues; Ctrl-C or SIGTERM finishes the
step, saves last.pt and exits with 130 / 143.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import save_image
from tqdm import tqdm

from data import denormalize, normalization, normalize
from data.mask_mix import MaskMix, check_mix
from data.masks import KNOWN, lab_mask, mask_rng
from data.sources import image_tensor
from metrics.psnr import psnr
from models.VQGAN import build_vqgan
from models.VQGAN.conditional import (count_branch, freeze_token_side, load_tokenizer_weights,
                                     scramble_partly_known, token_side_eval)
from models.VQGAN.discriminator import Discriminator
from models.VQGAN.losses import adopt_weight
from runtime.checkpoints import load_checkpoint, load_weights, save_checkpoint
from runtime.distributed import (all_reduce_mean, check_replicas_identical, cleanup_distributed,
                                 epoch_order, init_distributed)
from runtime.lr_schedule import lr_factor
from runtime.pace import Pace
from runtime.precision import memory_format, resolve_precision
from runtime.rng import all_rng_states, restore_rng, seed_everything
from runtime.run_log import RunLogger
from runtime.stopping import GracefulStop, check_finite
from training_vqgan import add_run_args, train_step
from utils import (UserError, apply_overrides, check_positive, check_probability, ensure_writable_dir,
                   load_config, require_keys, resolve_path, run_cli)

RECIPE_KEYS = ["init", "vqgan_config", "fuse_pixels", "hole_guide", "hole_residual", "masks", "mask_bank",
               "val_images", "training"]
TRAIN_KEYS = ["max_steps", "warmup_steps", "min_lr_ratio", "batch_size", "learning_rate", "betas",
              "l2_weight", "hole_weight", "token_noise", "disc_start", "disc_weight", "disc_channels", "disc_layers",
              "precision", "seed"]
VAL_MASK_SEED = 0  # the suite's masked val set: lab-like masks, seed 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/VQGAN_catface_conditional.yml")
    p.add_argument("--init", default=None, help="the VQGAN to start from (overrides the config's init)")
    p.add_argument("--vqgan-config", default=None,
                   help="builds an --init that is a plain state_dict (the lab's VQGAN.pt)")
    p.add_argument("--out", default="checkpoints/vqgan_conditional", help="checkpoint folder")
    add_run_args(p, resume_from="from --init")
    return p.parse_args(argv)


def resolve_config(args) -> tuple[dict, dict, Path]:
    """(the run's config: the --init VQGAN's architecture and normalisation, `conditional:
    true`, the recipe's masks and training; the --init state_dict; its path)."""
    recipe = load_config(args.config, args.set)
    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(unknown))} in {args.config}; a conditional "
                        f"recipe holds {', '.join(RECIPE_KEYS)} (the architecture comes from --init)")
    require_keys(recipe, RECIPE_KEYS, args.config)
    flags = {"max_steps": args.max_steps, "batch_size": args.batch_size,
             "learning_rate": args.learning_rate, "precision": args.precision}
    recipe = apply_overrides(recipe, [f"training.{k}={v}" for k, v in flags.items() if v is not None])
    for key, path in (("init", args.init), ("vqgan_config", args.vqgan_config)):
        if path is not None:  # paths as given, not parsed as YAML
            recipe[key] = path
    tc = recipe["training"]
    require_keys(tc, TRAIN_KEYS, f"{args.config} training")
    if set(tc) - set(TRAIN_KEYS):
        raise UserError(f"unknown key(s) {', '.join(sorted(set(tc) - set(TRAIN_KEYS)))} in "
                        f"{args.config} training; known: {', '.join(TRAIN_KEYS)}")
    check_positive({f"training.{k}": tc[k] for k in ("max_steps", "batch_size", "learning_rate",
                                                     "hole_weight")},
                   args.config)
    check_positive({f"training.{k}": tc[k] for k in ("warmup_steps", "min_lr_ratio")}, args.config,
                   strict=False)
    check_positive({k: recipe[k] for k in ("mask_bank", "val_images")}, args.config)
    check_probability({"training.token_noise": tc["token_noise"]}, args.config)
    check_mix(recipe["masks"], f"{args.config} masks")
    if not recipe["init"]:
        raise UserError("no VQGAN to start from; pass --init CKPT (ours, or the lab's VQGAN.pt "
                        "with --vqgan-config configs/VQGAN.yml)")

    init = resolve_path(recipe["init"])
    ck = load_checkpoint(init)
    if isinstance(ck, dict) and "model" in ck and "config" in ck:  # ours: its config wins
        arch, state = ck["config"], ck["model"]
    elif recipe["vqgan_config"]:
        arch, state = load_config(resolve_path(recipe["vqgan_config"])), ck
    else:
        raise UserError(f"--init {init} is a plain state_dict with no config (the lab's VQGAN.pt "
                        f"style); pass --vqgan-config, e.g. configs/VQGAN.yml")
    arch = {k: v for k, v in arch.items() if k not in ("training", *RECIPE_KEYS)}
    cfg = {**arch, "conditional": True, **{k: recipe[k] for k in RECIPE_KEYS}, "init": str(init)}
    return cfg, state, init


def val_masks(n: int, resolution: int) -> torch.Tensor:
    """known (n, 1, R, R) float: image i's lab-like mask of `python -m data.masks --seed 0`."""
    masks = [lab_mask(mask_rng(VAL_MASK_SEED, i), resolution) == KNOWN for i in range(n)]
    return torch.from_numpy(np.stack(masks))[:, None].float()


@torch.no_grad()
def evaluate(vq, images: torch.Tensor, known: torch.Tensor, mean, std, device,
             batch_size: int = 64) -> dict:
    """Mean PSNR (dB, [0, 1] pixels) of the decode of the images' own tokens through the
    conditional decoder under `known` (N, 1, R, R): the whole image, the known pixels (the
    input's own), the holes (the ground truth); under an all-hole mask (the decoder alone,
    as in unconditional generation); and the known pixels again with every partly known
    cell's token random (the same draws at every validation)."""
    vq.eval()
    scores = {"val_psnr": [], "val_psnr_known": [], "val_psnr_hole": [], "val_psnr_all_hole": [],
              "val_psnr_known_scrambled": []}
    draws = torch.Generator().manual_seed(0)
    for i in range(0, len(images), batch_size):
        x01 = images[i:i + batch_size].to(device).float() / 255
        k = known[i:i + batch_size].to(device)
        x = normalize(x01, mean, std)
        z_q, indices, _ = vq.encode(x)
        rec = denormalize(vq.decode(z_q, x, k), mean, std)
        alone = denormalize(vq.decode(z_q, x, torch.zeros_like(k)), mean, std)
        guessed = scramble_partly_known(indices, k, vq.num_codebook_vectors, 1.0, draws)
        scrambled = denormalize(vq.decode_indices(guessed, x, k), mean, std)
        for name, value in (("val_psnr", psnr(rec, x01)), ("val_psnr_known", psnr(rec, x01, k)),
                            ("val_psnr_hole", psnr(rec, x01, 1 - k)),
                            ("val_psnr_all_hole", psnr(alone, x01)),
                            ("val_psnr_known_scrambled", psnr(scrambled, x01, k))):
            scores[name].append(value)
    return {name: torch.nanmean(torch.cat(v)).item() for name, v in scores.items()}


def main(argv=None):
    args = parse_args(argv)
    cfg, init_state, init = resolve_config(args)
    tc = cfg["training"]
    device, rank, world = init_distributed(args.device)
    out = ensure_writable_dir(args.out)
    seed_everything(tc["seed"] + rank)  # each rank draws its own masks
    precision = resolve_precision(tc["precision"], device)
    mean, std = normalization(cfg, "train")
    res = cfg["img_resolution"]
    train = image_tensor(args.data, res, "train", args.partial, args.on_bad_image, tc["seed"])
    val = image_tensor(args.val_data, res, "val", None, args.on_bad_image, tc["seed"]) \
        if args.val_data or not args.data else train[:256]
    val = val[:cfg["val_images"]]
    known_val = val_masks(len(val), res)

    vq = build_vqgan(cfg, str(init))
    load_tokenizer_weights(vq, init_state, init, verbose=rank == 0)
    params = freeze_token_side(vq)  # encoder, quant_conv, codebook: the tokens stay valid
    layout = memory_format(device, precision, training=True)
    vq.to(device, memory_format=layout)
    disc = Discriminator(cfg["image_channels"], tc["disc_channels"], tc["disc_layers"]).to(
        device, memory_format=layout)
    opt_ae = torch.optim.Adam(params, lr=tc["learning_rate"], betas=tuple(tc["betas"]))
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc["learning_rate"], betas=tuple(tc["betas"]))
    masks = MaskMix(cfg["masks"], res, cfg["mask_bank"], tc["seed"])
    bs, total_steps = tc["batch_size"], tc["max_steps"]
    steps_per_epoch = len(train) // (bs * world)
    if steps_per_epoch == 0:
        raise UserError(f"{len(train)} training images are fewer than one step of {bs * world}; "
                        f"lower --batch-size")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    epoch, step, skip, best = 0, 0, 0, -math.inf
    resumed = args.resume and (out / "last.pt").exists()
    if resumed:
        ck = load_checkpoint(out / "last.pt", device)
        load_weights(vq, ck["model"], out / "last.pt"), load_weights(disc, ck["disc"], out / "last.pt")
        opt_ae.load_state_dict(ck["opt_ae"]), opt_d.load_state_dict(ck["opt_d"])
        scaler.load_state_dict(ck["scaler"])
        epoch, step, skip, best = ck["epoch"], ck["step"], ck["batch_in_epoch"], ck["best_psnr"]
        exact = restore_rng(ck["rng"], rank, world)
        if rank == 0:
            print(f"resumed from {out / 'last.pt'} at epoch {epoch}, step {step}"
                  + ("" if exact else " (other process count: fresh random streams)"))
    elif args.resume and rank == 0:
        print(f"--resume: no {out / 'last.pt'} yet, starting from {init}")
    vq_train = DDP(vq) if world > 1 else vq
    disc_train = DDP(disc) if world > 1 else disc
    logger = RunLogger(out, args.use_wandb, cfg, "vqgan_conditional", enabled=rank == 0)
    if rank == 0:
        branch_params, branch_macs = count_branch(vq, res)
        print(f"fine-tuning the conditional decoder of {init} on {len(train)} images: "
              f"{sum(p.numel() for p in params):,} trainable params (branch {branch_params:,}, "
              f"{branch_macs / 1e6:.1f}M MACs per image), effective batch {bs * world} ({world} x {bs}), "
              f"{total_steps} steps ({steps_per_epoch}/epoch), device {device}, {precision}")

    def report(metrics: dict, train_log: dict) -> float:
        """Log the val metrics (and the last step's losses); returns the val PSNR all ranks agree on."""
        metrics["val_psnr"] = all_reduce_mean(torch.tensor(metrics["val_psnr"], device=device)).item()
        if rank == 0:
            logger.log({"epoch": epoch, **{f"train_{k}": v for k, v in train_log.items()}, **metrics}, step)
            print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics["val_psnr"]

    def checkpoint(path, batch_in_epoch):
        """Collective (replica check, RNG gather): every rank calls it, rank 0 writes."""
        check_replicas_identical(vq, disc)
        rngs = all_rng_states()
        if rank == 0:
            save_checkpoint({"model": vq.state_dict(), "disc": disc.state_dict(),
                             "opt_ae": opt_ae.state_dict(), "opt_d": opt_d.state_dict(),
                             "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                             "batch_in_epoch": batch_in_epoch, "best_psnr": best, "rng": rngs,
                             "config": cfg, "precision": precision}, path)

    if not resumed:  # step 0: the plain decoder, the baseline every later step is read against
        report(evaluate(vq, val, known_val, mean, std, device), {})
    stop = GracefulStop(device, args.time_budget)
    pace = Pace(step, total_steps, steps_per_epoch, stop.deadline, enabled=rank == 0,
                slower_from=tc["disc_start"] if tc["disc_weight"] > 0 else None,
                why_slower="the PatchGAN trains")
    stopping, log = False, {}
    try:
        while step < total_steps and not stopping:
            vq_train.train(), disc_train.train()
            token_side_eval(vq)  # an EMA codebook in train mode would move its codes
            batches = epoch_order(len(train), epoch, tc["seed"], rank, world, bs, skip)
            bar = tqdm(batches, desc=f"epoch {epoch}", disable=rank != 0,
                       initial=skip, total=skip + len(batches))
            done = skip
            for b_idx, idx in enumerate(bar, start=skip):
                done = b_idx + 1
                x = normalize(train[idx].to(device).float() / 255, mean, std).contiguous(
                    memory_format=layout)
                known = masks.sample(len(idx)).to(device)  # (B, 1, R, R)
                lr = tc["learning_rate"] * lr_factor(step, tc["warmup_steps"], total_steps,
                                                     tc["min_lr_ratio"])
                for group in (*opt_ae.param_groups, *opt_d.param_groups):
                    group["lr"] = lr
                gan_w = adopt_weight(tc["disc_weight"], step, tc["disc_start"])
                _, log = train_step(vq_train, disc_train, vq.last_layer, opt_ae, opt_d, scaler, x,
                                    gan_w, tc["l2_weight"], device, precision,
                                    lambda loss: check_finite(loss, step, out), known=known,
                                    hole_weight=tc["hole_weight"], token_noise=tc["token_noise"])
                step += 1
                bar.set_postfix({k: f"{v:.3g}" for k, v in log.items()})
                pace.after_step(step)
                stopping = stop.after_step(step, args.ckpt_interval,
                                           lambda: checkpoint(out / "last.pt", b_idx + 1))
                if args.keep_every and step % args.keep_every == 0:
                    checkpoint(out / f"step_{step:06d}.pt", b_idx + 1)
                if stopping or step == total_steps:
                    break
            if stopping:
                break
            epoch, skip = (epoch + 1, 0) if done == skip + len(batches) else (epoch, done)
            pace.validation_starts()
            val_psnr = report(evaluate(vq, val, known_val, mean, std, device), log)
            if rank == 0:
                save_examples(vq, val[:8], known_val[:8], mean, std, device, out / "reconstructions.png")
            if val_psnr > best:
                best = val_psnr
                checkpoint(out / "best.pt", skip)
            checkpoint(out / "last.pt", skip)
            pace.validation_ends(step)
            stopping = stop.requested()
    finally:
        stop.restore()
        logger.close()
        cleanup_distributed()
    stop.finish(stopping, out / "last.pt", step, total_steps, verbose=rank == 0)


@torch.no_grad()
def save_examples(vq, images, known, mean, std, device, path: Path):
    """Rows: masked input (grey holes), conditional decode, the decoder alone (all-hole
    mask), ground truth."""
    x01 = images.to(device).float() / 255
    k = known.to(device)
    x = normalize(x01, mean, std)
    z_q, _, _ = vq.encode(x)
    rows = [x01 * k + 0.5 * (1 - k), denormalize(vq.decode(z_q, x, k), mean, std),
            denormalize(vq.decode(z_q, x, torch.zeros_like(k)), mean, std), x01]
    save_image(torch.cat(rows), path, nrow=len(images))


if __name__ == "__main__":
    run_cli(main)
