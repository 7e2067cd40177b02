"""Stage 2: train the bidirectional transformer with masked visual token modelling.

    python training_transformer.py --MaskGitConfig configs/MaskGit_tiny.yml        # generated data
    python training_transformer.py --MaskGitConfig configs/MaskGit.yml \\
        --train_d_path ../shared/datasets/cat_face/train --val_d_path ../shared/datasets/cat_face/val
    torchrun --nproc_per_node=2 training_transformer.py ...                         # data parallel

The VQGAN is frozen, so images are tokenised once and cached (--token-cache).
Writes <checkpoint-path>/last.pt, best.pt (lowest val loss) and epoch_NNN.pt atomically.
Ctrl-C or SIGTERM finishes the current step, saves last.pt and exits with 130 / 143;
--resume continues exactly where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import normalization
from data.masks import KNOWN, lab_mask
from data.sources import image_tensor
from data.tokens import cached_tokens
from models.Transformer.attention import attention_dropout, set_fused
from models.VQGAN_Transformer import MaskGit
from models.decoding import token_unknown_from_pixels
from runtime.checkpoints import load_checkpoint, load_weights, save_checkpoint
from runtime.distributed import (all_reduce_mean, check_replicas_identical, cleanup_distributed,
                                 epoch_order, init_distributed)
from runtime.ema import EMA
from runtime.lr_schedule import lr_factor
from runtime.pace import Pace
from runtime.precision import CHOICES as PRECISIONS, autocast, fused_attention, resolve_precision
from runtime.rng import all_rng_states, restore_rng, seed_everything
from runtime.run_log import RunLogger
from runtime.stopping import GracefulStop, check_finite
from utils import (UserError, add_overrides_arg, apply_overrides, check_positive, check_probability,
                   ensure_writable_dir, load_config, require_keys, run_cli)

TRAIN_KEYS = ["epochs", "batch_size", "accum_grad", "learning_rate", "min_lr_ratio", "warmup_steps",
              "weight_decay", "betas", "grad_clip", "masking", "hole_masking", "label_smoothing",
              "flip_augment", "precision", "ema_decay", "seed"]
FLAG_TO_KEY = {"epochs": "epochs", "batch_size": "batch_size", "accum_grad": "accum_grad",
               "learning_rate": "learning_rate", "masking": "masking",
               "label_smoothing": "label_smoothing", "precision": "precision",
               "ema_decay": "ema_decay", "seed": "seed", "hole_masking": "hole_masking",
               "max_steps": "max_steps"}
HOLE_POOL = 2048


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_d_path", default=None, help="training images (default: generated data)")
    p.add_argument("--val_d_path", default=None, help="validation images")
    p.add_argument("--checkpoint-path", default="checkpoints/transformer", help="checkpoint folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--num_workers", type=int, default=0,
                   help="unused: tokens live in memory; kept for the lab's command lines")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="per-process micro-batch")
    p.add_argument("--partial", type=float, default=None, help="use this fraction of the data")
    p.add_argument("--accum-grad", dest="accum_grad", type=int, help="micro-batches per step")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of max_steps")
    p.add_argument("--max-steps", dest="max_steps", type=int,
                   help="optimizer steps of the recipe (0: epochs x steps per epoch)")
    p.add_argument("--save-per-epoch", type=int, default=0, help="keep epoch_NNN.pt every N epochs")
    p.add_argument("--start-from-epoch", type=int, default=None,
                   help="resume from epoch_NNN.pt (written with --save-per-epoch)")
    p.add_argument("--resume", action="store_true",
                   help="continue from last.pt (from scratch if there is none yet)")
    p.add_argument("--ckpt-interval", type=int, default=0, help="also write last.pt every N steps")
    p.add_argument("--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--MaskGitConfig", default="configs/MaskGit_tiny.yml")
    p.add_argument("--masking", choices=["maskgit", "bernoulli"])
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    p.add_argument("--hole-masking", dest="hole_masking", type=float,
                   help="fraction of samples masked inside a lab-style hole (maskgit masking)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="auto (configs' default): bf16 where the hardware runs it natively, else fp32")
    p.add_argument("--ema-decay", dest="ema_decay", type=float, help="0 disables the EMA")
    p.add_argument("--seed", type=int)
    add_overrides_arg(p)
    p.add_argument("--token-cache", default="checkpoints/token_cache")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error")
    p.add_argument("--time-budget", type=float, default=0,
                   help="safety stop after this many minutes (the run is then a prefix of the recipe)")
    p.add_argument("--use_wandb", action="store_true")
    return p.parse_args(argv)


def resolve_config(args) -> dict:
    cfg = load_config(args.MaskGitConfig)
    require_keys(cfg, ["model_param", "train_param"], args.MaskGitConfig)
    cfg["train_param"].setdefault("max_steps", 0)  # configs older than step-counted recipes
    cfg = apply_overrides(cfg, args.set, where=str(args.MaskGitConfig))  # --set reaches max_steps too
    if args.epochs is not None and args.max_steps is not None:
        raise UserError("--epochs and --max-steps both set the run's length; pass one of them")
    if args.epochs is not None:  # a length in epochs replaces the config's step count
        args.max_steps = 0
    flags = {key: getattr(args, flag) for flag, key in FLAG_TO_KEY.items()}
    cfg = apply_overrides(cfg, [f"train_param.{k}={v}" for k, v in flags.items() if v is not None])
    require_keys(cfg["train_param"], TRAIN_KEYS, f"{args.MaskGitConfig} train_param")
    check_probability({"train_param.hole_masking": cfg["train_param"]["hole_masking"]}, args.MaskGitConfig)
    check_positive({f"train_param.{k}": cfg["train_param"][k] for k in
                    ("batch_size", "accum_grad", "learning_rate", "grad_clip")}, args.MaskGitConfig)
    check_positive({"train_param.max_steps": cfg["train_param"]["max_steps"]}, args.MaskGitConfig,
                   strict=False)
    return cfg


def build_optimizer(transformer: torch.nn.Module, tp: dict) -> torch.optim.AdamW:
    """AdamW; matrices decay, while norms, biases, embeddings and positions do not."""
    decay, no_decay = [], []
    for name, p in transformer.named_parameters():
        (decay if p.dim() == 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tp["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tp["learning_rate"], betas=tuple(tp["betas"]))


def load_tokens(model: MaskGit, folder, split: str, args, device) -> torch.Tensor:
    """(V, N, L) token ids of a split through the cache (V = 2 with flip augmentation)."""
    vq = model.vq_config
    images = image_tensor(folder, vq["img_resolution"], split, args.partial, args.on_bad_image)
    mean, std = normalization(vq, "train")
    flip = split == "train" and args.cfg["train_param"]["flip_augment"]
    return cached_tokens(model.vqgan, model.vq_ckpt, images, mean, std, device, args.token_cache, flip)


def hole_regions(count: int, resolution: int, grid: int, seed: int) -> torch.Tensor:
    """(count, grid*grid) bool: the tokens under `count` lab-style holes (drawn once;
    training samples from this pool). A 3-entry seed keeps the stream apart from every
    masked test set, whose masks come from 2-entry seeds (data.masks.mask_rng)."""
    rng = np.random.default_rng([seed, 1, 1])
    known = np.stack([lab_mask(rng, resolution) == KNOWN for _ in range(count)])
    return token_unknown_from_pixels(torch.from_numpy(known).unsqueeze(1), grid)


@torch.no_grad()
def validation_loss(model: MaskGit, tokens: torch.Tensor, tp: dict, device, batch_size: int,
                    precision: str) -> float:
    """Mean masked-token loss on fixed masks (seeded), so epochs are comparable; at the run's
    precision, with the attention kernel the policy picks for inference there (each computes
    the same function; runtime/precision.py). In bf16 the 3000 cat-face val images took
    56-63 s against 98 s in fp32 on a Zen 4, and the loss moved by 3e-5
    (benchmarks/EXPERIMENTS.md)."""
    model.eval()
    set_fused(model.transformer, fused_attention(device, precision, False))
    gen = torch.Generator(device).manual_seed(1234)
    total, count = 0.0, 0
    for i in range(0, tokens.shape[1], batch_size):
        idx = tokens[0, i:i + batch_size].to(device)
        with autocast(device, precision):
            logits, target, _ = model(idx, tp["masking"], generator=gen)
        total += MaskGit.loss(logits, target).item() * len(idx)
        count += len(idx)
    return total / count


def main(argv=None):
    args = parse_args(argv)
    cfg = args.cfg = resolve_config(args)
    tp = cfg["train_param"]
    device, rank, world = init_distributed(args.device)
    out = ensure_writable_dir(args.checkpoint_path)
    seed_everything(tp["seed"] + rank)
    precision = resolve_precision(tp["precision"], device)

    model = MaskGit(cfg["model_param"], where=args.MaskGitConfig).to(device)
    train_tokens = load_tokens(model, args.train_d_path, "train", args, device)
    val_tokens = load_tokens(model, args.val_d_path, "val", args, device) \
        if args.val_d_path or not args.train_d_path else train_tokens[:1, :256]
    transformer = model.transformer
    # the config's attention kernel gives way to the faster one for training here (and for the
    # validation in validation_loss); both compute the same function (runtime/precision.py)
    fused_train = fused_attention(device, precision, True, attention_dropout(transformer))
    holes = None
    if tp["hole_masking"] > 0:
        if tp["masking"] != "maskgit":
            raise UserError(f"{args.MaskGitConfig}: hole_masking needs masking: maskgit")
        vq = model.vq_config
        holes = hole_regions(HOLE_POOL, vq["img_resolution"], vq["latent_resolution"], tp["seed"])
    opt = build_optimizer(transformer, tp)
    bs, accum = tp["batch_size"], tp["accum_grad"]
    steps_per_epoch = train_tokens.shape[1] // (bs * world * accum)
    if steps_per_epoch == 0:
        raise UserError(f"{train_tokens.shape[1]} training images are fewer than one step of "
                        f"{bs * world * accum}; lower --batch-size or --accum-grad")
    # the recipe is counted in steps: its length, and so the LR schedule, never depend on
    # the machine's speed, and a run stopped early is a prefix of the full one
    total_steps = tp["max_steps"] or tp["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tp["warmup_steps"], total_steps, tp["min_lr_ratio"]))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    epoch, step, skip, best = 0, 0, 0, math.inf

    resume_from = resume_path(out, args, rank)
    ck = load_checkpoint(resume_from, device) if resume_from else None
    if ck is not None:
        load_weights(transformer, ck["model"], resume_from)
        opt.load_state_dict(ck["optimizer"]), sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        epoch, step, skip, best = ck["epoch"], ck["step"], ck["batch_in_epoch"], ck["best_val"]
        exact = restore_rng(ck["rng"], rank, world)
        if rank == 0:
            print(f"resumed from {resume_from} at epoch {epoch}, step {step}"
                  + ("" if exact else " (other process count: fresh random streams)"))

    model_train = DDP(model) if world > 1 else model  # broadcasts rank 0's weights to all ranks
    # built after DDP and resume, so every rank averages the same starting weights
    ema = EMA(transformer, tp["ema_decay"]) if tp["ema_decay"] > 0 else None
    if ema is not None and ck is not None and ck.get("ema") is not None:
        ema.load_state_dict(ck["ema"])
    logger = RunLogger(out, args.use_wandb, cfg, "transformer", enabled=rank == 0)
    if rank == 0:
        n_params = sum(p.numel() for p in transformer.parameters())
        print(f"training transformer ({n_params:,} params) on {train_tokens.shape[1]} images "
              f"x {train_tokens.shape[0]} view(s); effective batch {bs * accum * world} "
              f"({world} proc x {bs} x {accum} accum), {total_steps} steps ({steps_per_epoch}/epoch), "
              f"device {device}, {precision}")

    def checkpoint(path, batch_in_epoch):
        """Collective (replica check, RNG gather): every rank calls it, rank 0 writes."""
        check_replicas_identical(transformer)
        rngs = all_rng_states()
        if rank == 0:
            save_checkpoint({"model": transformer.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                             "ema": ema.state_dict() if ema else None, "epoch": epoch,
                             "step": step, "batch_in_epoch": batch_in_epoch, "best_val": best,
                             "rng": rngs, "config": cfg, "precision": precision,
                             "vq_ckpt": str(model.vq_ckpt) if model.vq_ckpt else None}, path)

    # from here on Ctrl-C, SIGTERM and the time budget stop between steps, with a checkpoint
    stop = GracefulStop(device, args.time_budget)
    pace = Pace(step, total_steps, steps_per_epoch, stop.deadline, enabled=rank == 0)
    stopping = False
    try:
        while step < total_steps and not stopping:
            model_train.train()
            set_fused(transformer, fused_train)
            batches = epoch_order(train_tokens.shape[1], epoch, tp["seed"], rank, world, bs, skip)
            batches = batches[:len(batches) - len(batches) % accum]
            loss_sum, n_steps, done = torch.zeros((), device=device), 0, skip
            bar = tqdm(batches, desc=f"epoch {epoch}", disable=rank != 0, initial=skip,
                       total=skip + len(batches))
            for b_idx, idx in enumerate(bar, start=skip):
                done = b_idx + 1
                view = torch.randint(train_tokens.shape[0], (len(idx),))
                tokens = train_tokens[view, torch.tensor(idx)].to(device, non_blocking=True)
                region = None
                if holes is not None:
                    in_hole = torch.rand(len(idx)) < tp["hole_masking"]
                    pick = torch.randint(len(holes), (len(idx),))
                    region = (holes[pick] | ~in_hole.unsqueeze(1)).to(device)
                last_micro = (b_idx + 1) % accum == 0
                sync = contextlib.nullcontext() if last_micro or world == 1 else model_train.no_sync()
                with sync:
                    with autocast(device, precision):
                        logits, target, _ = model_train(tokens, tp["masking"], region=region)
                    loss = MaskGit.loss(logits, target, tp["label_smoothing"])
                    scaler.scale(loss / accum).backward()
                if not last_micro:
                    continue
                check_finite(loss, step, out)
                scaler.unscale_(opt)
                grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), tp["grad_clip"])
                if not scaler.is_enabled():  # fp16's scaler skips inf steps itself
                    check_finite(grad_norm, step, out, "gradient norm")
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                if ema is not None:
                    ema.update(transformer)
                step += 1
                loss_sum += loss.detach()
                n_steps += 1
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
                pace.after_step(step)
                stopping = stop.after_step(step, args.ckpt_interval,
                                           lambda: checkpoint(out / "last.pt", b_idx + 1))
                if stopping or step == total_steps:
                    break
            if stopping:
                break
            # max_steps may end mid-epoch: the checkpoints below then record the position
            epoch, skip = (epoch + 1, 0) if done == skip + len(batches) else (epoch, done)
            pace.validation_starts()
            with ema.swapped_into(transformer) if ema else contextlib.nullcontext():
                val = validation_loss(model, val_tokens, tp, device, 4 * bs, precision)
            # ranks agree on `val` exactly, so they take the same checkpoint branch below
            val = all_reduce_mean(torch.tensor(val, device=device)).item()
            metrics = {"val_loss": val, "lr": sched.get_last_lr()[0]}
            if n_steps:  # 0 when resumed from a checkpoint taken after the epoch's last step
                metrics.update(train_loss=(all_reduce_mean(loss_sum) / n_steps).item(),
                               grad_norm=grad_norm.item())
            if rank == 0:
                logger.log({"epoch": epoch, **metrics}, step)
                print(f"epoch {epoch}: train loss {metrics.get('train_loss', math.nan):.4f}, "
                      f"val loss {val:.4f}")
            if val < best:
                best = val
                checkpoint(out / "best.pt", skip)
            if args.save_per_epoch and skip == 0 and epoch % args.save_per_epoch == 0:
                checkpoint(out / f"epoch_{epoch:03d}.pt", 0)
            checkpoint(out / "last.pt", skip)
            pace.validation_ends(step)
            stopping = stop.requested()
    finally:
        stop.restore()
        logger.close()
        cleanup_distributed()
    stop.finish(stopping, out / "last.pt", step, total_steps, verbose=rank == 0)


def resume_path(out: Path, args, rank: int) -> Path | None:
    """--start-from-epoch N -> epoch_NNN.pt; --resume -> last.pt if there is one."""
    if args.start_from_epoch is not None:
        path = out / f"epoch_{args.start_from_epoch:03d}.pt"
        if not path.exists():
            kept = sorted(p.name for p in out.glob("epoch_*.pt")) or ["none"]
            raise UserError(f"{path} not found (kept: {', '.join(kept)}); per-epoch "
                            f"checkpoints are written with --save-per-epoch N")
        return path
    if args.resume:
        if (out / "last.pt").exists():
            return out / "last.pt"
        if rank == 0:
            print(f"--resume: no {out / 'last.pt'} yet, starting from scratch")
    return None


if __name__ == "__main__":
    run_cli(main)
