"""Stage 1: train a VQGAN tokenizer.

    python training_vqgan.py --config configs/VQGAN_tiny.yml                 # generated data
    python training_vqgan.py --config configs/VQGAN_catface_compact.yml \\
        --data ../shared/datasets/cat_face/train --val-data ../shared/datasets/cat_face/val
    torchrun --nproc_per_node=2 training_vqgan.py ...                        # data parallel

The config's `architecture` picks the lab's VQGAN (the default) or CompactVQGAN. The run
lasts `training.max_steps` optimizer steps (0: `epochs` epochs), with a linear warm-up and
a cosine decay of the learning rate over them. Loss: L1 (+ optional L2) reconstruction,
codebook + commitment, and from step `disc_start` an adaptively weighted hinge PatchGAN
loss, with optional feature matching on the PatchGAN's activations (`fm_weight`). Dead
codebook entries are re-initialised from encoder outputs every `restart_every` steps.
Writes <out>/last.pt and <out>/best.pt (best val PSNR) atomically; --resume continues.
Ctrl-C or SIGTERM finishes the current step, saves last.pt and exits with 130 / 143.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import save_image
from tqdm import tqdm

from data import denormalize, normalization, normalize
from data.sources import image_tensor
from models.VQGAN import build_vqgan, codebook_usage
from models.VQGAN.discriminator import Discriminator
from models.VQGAN.losses import adopt_weight, feature_matching_loss, generator_loss, hinge_d_loss
from runtime.checkpoints import load_checkpoint, load_weights, save_checkpoint
from runtime.distributed import (all_reduce_mean, check_replicas_identical, cleanup_distributed,
                                 epoch_order, init_distributed)
from runtime.lr_schedule import lr_factor
from runtime.pace import Pace
from runtime.precision import CHOICES as PRECISIONS, autocast, memory_format, resolve_precision
from runtime.rng import all_rng_states, restore_rng, seed_everything
from runtime.run_log import RunLogger
from runtime.stopping import GracefulStop, check_finite
from utils import (UserError, add_overrides_arg, apply_overrides, check_positive, ensure_writable_dir,
                   load_config, require_keys, run_cli)

TRAIN_KEYS = ["epochs", "batch_size", "learning_rate", "betas", "l2_weight", "disc_start",
              "disc_weight", "disc_channels", "disc_layers", "restart_every", "precision", "seed"]
# Step-counted recipe keys, with the values that keep older configs' behaviour: the
# length from `epochs`, a constant learning rate.
STEP_DEFAULTS = {"max_steps": 0, "warmup_steps": 0, "min_lr_ratio": 1.0}
# Optional loss keys, off by default: feature matching on the PatchGAN while it trains.
LOSS_DEFAULTS = {"fm_weight": 0.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/VQGAN_tiny.yml")
    p.add_argument("--out", default="checkpoints/vqgan", help="checkpoint folder")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of training.max_steps")
    add_run_args(p, resume_from="from scratch")
    return p.parse_args(argv)


def add_run_args(p: argparse.ArgumentParser, resume_from: str) -> None:
    """The flags of a stage-1 run that this trainer and training_conditional.py share."""
    p.add_argument("--data", default=None, help="training image folder (default: generated data)")
    p.add_argument("--val-data", default=None, help="validation image folder")
    p.add_argument("--max-steps", type=int, help="overrides training.max_steps, the recipe's length")
    p.add_argument("--batch-size", type=int, help="per-process batch; overrides training.batch_size")
    p.add_argument("--learning-rate", type=float, help="overrides training.learning_rate")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="overrides training.precision; auto: bf16 where the hardware runs it natively")
    add_overrides_arg(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--partial", type=float, default=None, help="use this fraction of the data")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error")
    p.add_argument("--resume", action="store_true",
                   help=f"continue from <out>/last.pt ({resume_from} if there is none yet)")
    p.add_argument("--ckpt-interval", "--save-every-steps", dest="ckpt_interval", type=int, default=0,
                   help="also write last.pt every N steps")
    p.add_argument("--keep-every", type=int, default=0, metavar="N",
                   help="also keep a copy <out>/step_<step>.pt every N steps, for a curve "
                        "against steps (benchmarks/tokenizer_quality.py)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="safety stop after this many minutes (the run is then a prefix of the recipe)")
    p.add_argument("--use_wandb", action="store_true")


def resolve_config(args) -> dict:
    cfg = load_config(args.config)
    require_keys(cfg, ["training"], args.config)
    for k, v in {**STEP_DEFAULTS, **LOSS_DEFAULTS}.items():
        cfg["training"].setdefault(k, v)
    # after the defaults, so that --set reaches an optional key the file leaves out
    cfg = apply_overrides(cfg, args.set, where=str(args.config))
    if args.epochs is not None and args.max_steps is not None:
        raise UserError("--epochs and --max-steps both set the run's length; pass one of them")
    # --epochs asks for a length in epochs, so it replaces the config's step count
    max_steps = 0 if args.epochs is not None else args.max_steps
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "max_steps": max_steps,
             "learning_rate": args.learning_rate, "precision": args.precision}
    cfg = apply_overrides(cfg, [f"training.{k}={v}" for k, v in flags.items() if v is not None])
    require_keys(cfg["training"], TRAIN_KEYS, f"{args.config} training")
    check_positive({f"training.{k}": cfg["training"][k] for k in ("batch_size", "learning_rate",
                                                                  "restart_every")}, args.config)
    check_positive({f"training.{k}": cfg["training"][k] for k in {**STEP_DEFAULTS, **LOSS_DEFAULTS}},
                   args.config, strict=False)
    return cfg


def train_step(vq, disc, last_layer, opt_ae, opt_d, scaler, x, gan_weight: float,
               l2_weight: float, device, precision: str, check=lambda loss: None, known=None,
               fm_weight: float = 0.0, hole_weight: float = 1.0, token_noise: float = 0.0):
    """One optimizer step of the autoencoder and, when `gan_weight` > 0, of the discriminator,
    on the normalised batch x (B, 3, R, R); with `known` (B, 1, R, R), 1 = known pixel, the
    reconstruction goes through the conditional decoder (training_conditional.py), from
    tokens whose partly known cells are scrambled with probability `token_noise`, and its
    hole pixels weigh `hole_weight` in the reconstruction loss (the known ones 1).
    `fm_weight` > 0 adds feature matching on the discriminator while the GAN is on.
    `check(loss)` runs before any weight changes.
    Returns (the batch's code indices (B, r*r), a log dict of the losses)."""
    matching = gan_weight > 0 and fm_weight > 0
    fm_loss = logits_fake = None
    if gan_weight > 0:  # the generator's loss needs D's input gradients, not its weights'
        disc.requires_grad_(False)
    with autocast(device, precision):
        x_rec, indices, q_loss = vq(x) if known is None else vq(x, known, token_noise)
        if matching:
            logits_fake, feats_fake = disc(x_rec, features=True)
            with torch.no_grad():
                _, feats_real = disc(x, features=True)
            fm_loss = feature_matching_loss(feats_fake, feats_real)
        elif gan_weight > 0:
            logits_fake = disc(x_rec)
    pixel_weight = None if known is None or hole_weight == 1 else known + hole_weight * (1 - known)
    loss, log = generator_loss(x, x_rec.float(), q_loss.float(), logits_fake, last_layer,
                               gan_weight, l2_weight, fm_loss, fm_weight, pixel_weight)
    check(loss)
    opt_ae.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt_ae)
    if gan_weight > 0:
        disc.requires_grad_(True)
        with autocast(device, precision):
            d_loss = hinge_d_loss(disc(x.detach()), disc(x_rec.detach()))
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        scaler.step(opt_d)
        log["d"] = d_loss.item()
    scaler.update()
    return indices, log


@torch.no_grad()
def evaluate(vq, images: torch.Tensor, mean, std, device, batch_size: int = 64) -> dict:
    """Reconstruction L1 (normalised space), PSNR on [0, 1] pixels, codebook usage and perplexity."""
    vq.eval()
    l1, mse, all_idx = [], [], []
    for i in range(0, len(images), batch_size):
        x01 = images[i:i + batch_size].to(device).float() / 255
        x_rec, idx, _ = vq(normalize(x01, mean, std))
        rec01 = denormalize(x_rec, mean, std)
        l1.append((x_rec - normalize(x01, mean, std)).abs().mean(dim=(1, 2, 3)))
        mse.append(((rec01 - x01) ** 2).mean(dim=(1, 2, 3)))
        all_idx.append(idx)
    mse = torch.cat(mse)
    _, usage, perplexity = codebook_usage(torch.cat(all_idx), vq.num_codebook_vectors)
    return {"val_l1": torch.cat(l1).mean().item(),
            "val_psnr": (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item(),
            "val_usage": usage, "val_perplexity": perplexity}


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve_config(args)
    tc = cfg["training"]
    device, rank, world = init_distributed(args.device)
    out = ensure_writable_dir(args.out)
    seed_everything(tc["seed"] + rank)
    precision = resolve_precision(tc["precision"], device)
    mean, std = normalization(cfg, "train")
    res = cfg["img_resolution"]
    train = image_tensor(args.data, res, "train", args.partial, args.on_bad_image, tc["seed"])
    val = image_tensor(args.val_data, res, "val", None, args.on_bad_image, tc["seed"]) \
        if args.val_data or not args.data else train[:256]

    layout = memory_format(device, precision, training=True)
    vq = build_vqgan(cfg, args.config).to(device, memory_format=layout)
    disc = Discriminator(cfg["image_channels"], tc["disc_channels"], tc["disc_layers"]).to(
        device, memory_format=layout)
    opt_ae = torch.optim.Adam(vq.parameters(), lr=tc["learning_rate"], betas=tuple(tc["betas"]))
    opt_d = torch.optim.Adam(disc.parameters(), lr=tc["learning_rate"], betas=tuple(tc["betas"]))
    bs = tc["batch_size"]
    steps_per_epoch = len(train) // (bs * world)
    if steps_per_epoch == 0:
        raise UserError(f"{len(train)} training images are fewer than one step of {bs * world}; "
                        f"lower --batch-size")
    # counted in steps, so the schedule and the GAN start never depend on the machine's speed
    total_steps = tc["max_steps"] or tc["epochs"] * steps_per_epoch
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    epoch, step, skip, best = 0, 0, 0, -math.inf
    # uses of each code since the last dead-code restart, summed over ranks at the restart
    counts = torch.zeros(vq.num_codebook_vectors, device=device)
    if args.resume and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt", device)
        load_weights(vq, ck["model"], out / "last.pt"), load_weights(disc, ck["disc"], out / "last.pt")
        opt_ae.load_state_dict(ck["opt_ae"]), opt_d.load_state_dict(ck["opt_d"])
        scaler.load_state_dict(ck["scaler"])
        epoch, step, skip, best = ck["epoch"], ck["step"], ck["batch_in_epoch"], ck["best_psnr"]
        if rank == 0 and "code_counts" in ck:  # the sum over ranks; rank 0 carries it on
            counts.copy_(ck["code_counts"])
        exact = restore_rng(ck["rng"], rank, world)
        if rank == 0:
            print(f"resumed from {out / 'last.pt'} at epoch {epoch}, step {step}"
                  + ("" if exact else " (other process count: fresh random streams)"))
    elif args.resume and rank == 0:
        print(f"--resume: no {out / 'last.pt'} yet, starting from scratch")
    vq_train = DDP(vq) if world > 1 else vq
    disc_train = DDP(disc) if world > 1 else disc
    logger = RunLogger(out, args.use_wandb, cfg, "vqgan", enabled=rank == 0)
    if rank == 0:
        print(f"training VQGAN on {len(train)} images, {sum(p.numel() for p in vq.parameters()):,} "
              f"params, effective batch {bs * world} ({world} x {bs}), {total_steps} steps "
              f"({steps_per_epoch}/epoch), device {device}, {precision}")

    def checkpoint(path, batch_in_epoch):
        """Collective (replica check, RNG and count gathers): every rank calls it, rank 0 writes."""
        check_replicas_identical(vq, disc)
        rngs, code_counts = all_rng_states(), all_reduce_mean(counts) * world
        if rank == 0:
            save_checkpoint({"model": vq.state_dict(), "disc": disc.state_dict(),
                             "opt_ae": opt_ae.state_dict(), "opt_d": opt_d.state_dict(),
                             "scaler": scaler.state_dict(), "epoch": epoch, "step": step,
                             "batch_in_epoch": batch_in_epoch, "best_psnr": best,
                             "code_counts": code_counts, "rng": rngs, "config": cfg,
                             "precision": precision}, path)

    # from here on Ctrl-C, SIGTERM and the time budget stop between steps, with a checkpoint
    stop = GracefulStop(device, args.time_budget)
    pace = Pace(step, total_steps, steps_per_epoch, stop.deadline, enabled=rank == 0,
                slower_from=tc["disc_start"] if tc["disc_weight"] > 0 else None,
                why_slower="the PatchGAN trains")
    stopping, log = False, {}
    try:
        while step < total_steps and not stopping:
            vq_train.train(), disc_train.train()
            batches = epoch_order(len(train), epoch, tc["seed"], rank, world, bs, skip)
            bar = tqdm(batches, desc=f"epoch {epoch}", disable=rank != 0,
                       initial=skip, total=skip + len(batches))
            done = skip
            for b_idx, idx in enumerate(bar, start=skip):
                done = b_idx + 1
                x = normalize(train[idx].to(device).float() / 255, mean, std).contiguous(
                    memory_format=layout)
                lr = tc["learning_rate"] * lr_factor(step, tc["warmup_steps"], total_steps,
                                                     tc["min_lr_ratio"])
                for group in (*opt_ae.param_groups, *opt_d.param_groups):
                    group["lr"] = lr
                gan_w = adopt_weight(tc["disc_weight"], step, tc["disc_start"])
                indices, log = train_step(vq_train, disc_train, vq.last_layer, opt_ae, opt_d, scaler,
                                          x, gan_w, tc["l2_weight"], device, precision,
                                          lambda loss: check_finite(loss, step, out),
                                          fm_weight=tc["fm_weight"])
                counts += torch.bincount(indices.flatten(), minlength=len(counts))
                step += 1
                if step % tc["restart_every"] == 0:
                    total = all_reduce_mean(counts) * world
                    with torch.no_grad():
                        z = vq.latents(x)
                    log["restarted"] = vq.codebook.restart_dead_codes(total, z.float())
                    if world > 1:  # every rank must hold rank 0's codebook
                        torch.distributed.broadcast(vq.codebook.embedding.weight.data, 0)
                    counts.zero_()
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
            # max_steps may end mid-epoch: the checkpoints below then record the position
            epoch, skip = (epoch + 1, 0) if done == skip + len(batches) else (epoch, done)
            pace.validation_starts()
            # every rank evaluates (identical replicas; the others would only wait), so all
            # agree on `best` and take part in the collective checkpoint below
            metrics = evaluate(vq, val, mean, std, device)
            metrics["val_psnr"] = all_reduce_mean(torch.tensor(metrics["val_psnr"], device=device)).item()
            if rank == 0:
                logger.log({"epoch": epoch, **{f"train_{k}": v for k, v in log.items()}, **metrics}, step)
                print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                save_reconstructions(vq, val[:8], mean, std, device, out / "reconstructions.png")
            if metrics["val_psnr"] > best:
                best = metrics["val_psnr"]
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
def save_reconstructions(vq, images, mean, std, device, path: Path):
    """Top row: inputs; bottom row: reconstructions."""
    x01 = images.to(device).float() / 255
    rec = denormalize(vq(normalize(x01, mean, std))[0], mean, std)
    save_image(torch.cat([x01, rec]), path, nrow=len(images))


if __name__ == "__main__":
    run_cli(main)
