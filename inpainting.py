"""Inpaint masked images with MaskGIT iterative decoding.

    python inpainting.py --load-transformer-ckpt-path checkpoints/transformer/best.pt \\
        --test-maskedimage-path masked/masked_image --test-mask-path masked/mask64 \\
        --total-iter 7 --mask-func cosine [--gt-path masked/gt]

Writes, under --out (default: the current folder, as the lab does):
  test_results/image_{i:03d}.png   final images
  mask_scheduling/image_{i:03d}.png  token mask after each step (white = decided)
  imga/image_{i:03d}.png           masked input, then the decoded image at each step
Step pictures are decoded only for the first --save-steps images.
`--conditional-vqgan CKPT` decodes through a mask-conditioned VQGAN (training_conditional.py)
that keeps the known pixels itself: test_results/ and imga/ then hold its output, nothing
pasted (--composite still applies on top), and plain_results/ the plain decode of the same tokens.
`--generate N` samples N images from scratch (every token masked) instead.
Outpainting is inpainting with border masks: see `python -m data.masks --kind outpaint`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from data import MaskedImageDataset, denormalize, normalization, to_uint8
from models.compositing import MODES as COMPOSITE_MODES, composite as composite_images
from models.Transformer.attention import set_fused
from models.Transformer.int8 import quantize_linears
from models.VQGAN_Transformer import HOLE_FILLS, MIN_KNOWN, REENCODE, MaskGit
from runtime.checkpoints import load_checkpoint, load_weights
from runtime.precision import (CHOICES as PRECISIONS, autocast, channels_last, fused_attention,
                               resolve_device, resolve_precision)
from utils import UserError, check_positive, ensure_writable_dir, load_config, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--partial", type=float, default=1.0, help="inpaint this fraction of the set")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--MaskGitConfig", default=None,
                   help="only for checkpoints that carry no config (the checkpoint's own wins)")
    p.add_argument("--load-transformer-ckpt-path", required=True)
    p.add_argument("--test-maskedimage-path", default="masked/masked_image")
    p.add_argument("--test-mask-path", default="masked/mask64")
    p.add_argument("--sweet-spot", type=int, default=-1,
                   help="stop after this many steps; -1 (or >= --total-iter) runs them all")
    p.add_argument("--total-iter", type=int, default=7)
    p.add_argument("--mask-func", default=None, help="schedule (default: the config's gamma_type)")
    p.add_argument("--choice-temperature", type=float, default=None,
                   help="Gumbel noise on the confidence (default: the config's)")
    p.add_argument("--temperature", type=float, default=None,
                   help="token sampling temperature, 0 = most likely token (default: the config's, else 1)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where the hardware runs it natively (every network under "
                        "autocast), else fp32")
    p.add_argument("--int8", action="store_true",
                   help="approximate, CPU fp32 only: the transformer's linears in dynamic int8 "
                        "(models/Transformer/int8.py); its measured FID effect is in the README")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".", help="folder for test_results/, mask_scheduling/, imga/")
    p.add_argument("--save-steps", type=int, default=1, help="step pictures for the first N images")
    add_composite_arg(p, "put the known pixels back into the output")
    add_conditional_arg(p)
    add_token_rule_args(p)
    p.add_argument("--generate", type=int, default=0, metavar="N", help="sample N images from scratch")
    p.add_argument("--gt-path", default=None, help="ground truth (folder/.csv/.npz): print the FID")
    return p.parse_args(argv)


def add_composite_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--composite", nargs="?", const="poisson", default=None, choices=COMPOSITE_MODES,
                   help=f"{what}: 'poisson' (the default when the flag is given) blends the holes "
                        f"in seamlessly, 'paste' copies the known pixels over")


def add_conditional_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conditional-vqgan", default=None, metavar="CKPT",
                   help="decode through this mask-conditioned VQGAN (training_conditional.py, "
                        "fine-tuned from the transformer's VQGAN), which keeps the known pixels itself")


def add_token_rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hole-fill", choices=HOLE_FILLS, default=None,
                   help="fill the holes before encoding: 'harmonic' from their edge, 'none' encodes "
                        "the masked image as given, the lab's way (default: the config's, else none)")
    p.add_argument("--min-known", type=float, default=None,
                   help="keep a token when at least this fraction of its pixels are known; 1 "
                        "re-predicts every token that touches a hole (default: the config's, else "
                        f"{MIN_KNOWN:g})")
    p.add_argument("--reencode", type=int, default=None, metavar="N",
                   help="after decoding, fill the holes with the decode (Poisson-blended), encode "
                        "and decode again, N times; the output is still all VQGAN decode "
                        f"(default: the config's, else {REENCODE}, the lab's way)")


def check_schedule_args(total_iter: int, sweet_spot: int) -> None:
    if total_iter < 1:
        raise UserError(f"--total-iter {total_iter} must be at least 1")
    if sweet_spot == 0 or sweet_spot < -1:
        raise UserError(f"--sweet-spot {sweet_spot} must be -1 (no early stop) or a step count >= 1")


def differing_keys(given: dict, used: dict, prefix: str = "") -> list[str]:
    """Dotted keys of `given` whose values `used` does not share (nested dicts recursed)."""
    keys = []
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(used.get(key), dict):
            keys += differing_keys(value, used[key], f"{prefix}{key}.")
        elif used.get(key) != value:
            keys.append(prefix + key)
    return keys


def say_unused_settings(given: dict, used: dict, config_path, ckpt_path) -> None:
    """The checkpoint's own config wins over --MaskGitConfig: name what that leaves unused
    (the VQGAN's paths aside, which the checkpoint resolved when it was trained)."""
    unused = [k for k in differing_keys(given, used) if not k.startswith("VQ_Configs.")]
    if unused:
        print(f"note: {ckpt_path} carries its own config, which is used; these settings of "
              f"{config_path} are not: {', '.join(unused)} (the decoding flags, e.g. "
              f"--reencode, override it)")


def load_maskgit(ckpt_path, config_path=None, device="cpu", precision: str = "fp32",
                 conditional_vqgan=None, int8: bool = False, hole_fill: str | None = None,
                 min_known: float | None = None, reencode: int | None = None) -> MaskGit:
    """Rebuild MaskGit from a transformer checkpoint (its stored config, EMA weights if any),
    for inference in the resolved `precision` with the kernels of `inference_kernels`. With
    `conditional_vqgan` (a checkpoint path), that conditional VQGAN is attached for decoding.
    `int8` quantises the transformer's linears (approximate; CPU fp32 only). `hole_fill`,
    `min_known` and `reencode`, where given, replace the config's token rule
    (MaskGit.set_token_rule)."""
    if int8 and (torch.device(device).type != "cpu" or precision != "fp32"):
        raise UserError(f"--int8 is a CPU fp32 path, not {precision} on {device}; "
                        f"add --device cpu --precision fp32, or drop --int8")
    ck = load_checkpoint(ckpt_path, device)
    if "config" in ck and "model" in ck:
        cfg, state = ck["config"], (ck.get("ema") or ck["model"])
        if config_path:
            say_unused_settings(load_config(config_path)["model_param"], cfg["model_param"],
                                config_path, ckpt_path)
    elif config_path:
        cfg, state = load_config(config_path), ck
    else:
        raise UserError(f"checkpoint {ckpt_path} carries no config; pass --MaskGitConfig")
    rule = {k: v for k, v in (("hole_fill", hole_fill), ("min_known", min_known), ("reencode", reencode))
            if v is not None}
    model = MaskGit({**cfg["model_param"], **rule}, where=str(ckpt_path))
    load_weights(model.transformer, state, ckpt_path)
    if conditional_vqgan:
        model.attach_conditional_vqgan(conditional_vqgan)
    inference_kernels(model, device, precision)
    if int8:
        quantize_linears(model.transformer)
    return model.to(device).eval()


def inference_kernels(model: MaskGit, device, precision: str) -> MaskGit:
    """Switch `model` to the kernels the policy (runtime/precision.py) picks for inference
    in `precision` on `device`: the attention kernel measured faster (it replaces the
    config's choice; CUDA in fp32, where neither was measured, keeps it), and channels_last
    VQGAN convolutions where those are. Both compute the same function."""
    fused = fused_attention(device, precision, training=False)
    if fused or torch.device(device).type == "cpu":
        set_fused(model.transformer, fused)
    if channels_last(device, precision):
        model.vqgan.to(memory_format=torch.channels_last)
    return model


def image_generators(indices, seed: int, device) -> list[torch.Generator]:
    """One generator per image, seeded by its index: results do not depend on batching."""
    return [torch.Generator(device).manual_seed(seed * 1_000_003 + int(i)) for i in indices]


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def step_pictures(model: MaskGit, history, masked01: torch.Tensor, mean, std, autocast,
                  condition=None):
    """Per image: a strip of token masks and a strip of decoded images, one panel per step,
    decoded under the same `autocast` and by the same decoder (`condition` as for
    `MaskGit.decode_tokens`) as the result, so the last panel is the result, or with
    `reencode` passes (MaskGit.set_token_rule) what the first of them starts from."""
    grid, res = model.vqgan.latent_resolution, masked01.shape[-1]
    masks = [(tokens != model.mask_token_id) for tokens, _ in history]  # each (B, N) True = decided
    masks = torch.stack(masks, 1).view(len(masked01), len(history), 1, grid, grid).float()
    masks = torch.nn.functional.interpolate(masks.flatten(0, 1), size=res, mode="nearest")
    masks = masks.view(len(masked01), len(history), 1, res, res).expand(-1, -1, 3, -1, -1)
    with autocast():
        decoded = torch.stack([denormalize(model.decode_tokens(s, condition).float(), mean, std)
                               for _, s in history], 1)  # (B, T, 3, R, R)
    decoded = torch.cat([masked01.unsqueeze(1), decoded], 1)
    strip = lambda x: to_uint8(torch.cat(list(x.unbind(1)), dim=-1))  # (B, H, T*W, 3)
    return strip(masks), strip(decoded)


def inpaint_dataset(model: MaskGit, dataset: MaskedImageDataset, out_dir, total_iter: int = 7,
                    mask_func: str | None = None, sweet_spot: int = -1, batch_size: int = 32,
                    seed: int = 0, precision: str = "fp32", save_steps: int = 1,
                    composite: str | None = None, num_workers: int = 0, temperature: float | None = None,
                    choice_temperature: float | None = None, conditional: bool = False) -> Path:
    """Inpaint every image of `dataset`; returns the test_results folder. Decoding settings
    left at None come from the model's config; `composite` (None, "paste" or "poisson")
    puts the known pixels back (models.compositing). `conditional` decodes through the
    model's attached conditional VQGAN, and writes the plain decode of the same tokens to
    plain_results/."""
    check_schedule_args(total_iter, sweet_spot)
    device = next(model.transformer.parameters()).device
    gamma = model.gamma_func(mask_func) if mask_func else model.gamma
    mean, std = normalization(model.vq_config, "test")
    out_dir = Path(out_dir)
    results = ensure_writable_dir(out_dir / "test_results")
    plain_results = ensure_writable_dir(out_dir / "plain_results") if conditional else None
    if save_steps:
        ensure_writable_dir(out_dir / "mask_scheduling"), ensure_writable_dir(out_dir / "imga")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    precision_context = lambda: autocast(device, precision)
    for images, known, idx in tqdm(loader, desc="inpainting", disable=len(dataset) <= batch_size):
        images, known = images.to(device), known.to(device)
        record = bool(save_steps) and int(idx[0]) < save_steps
        out, final, history = model.inpaint(images, known, total_iter, image_generators(idx, seed, device),
                                            gamma, sweet_spot, record, autocast=precision_context,
                                            temperature=temperature, choice_temperature=choice_temperature,
                                            conditional=conditional)
        out01 = denormalize(out, mean, std)
        masked01 = denormalize(images, mean, std)
        out01 = composite_images(out01, masked01, known, composite)
        for i, img in zip(idx.tolist(), to_uint8(out01)):
            save_png(img, results / f"image_{i:03d}.png")
        if conditional:  # the plain decoder on the same tokens, for comparison
            with precision_context():
                plain01 = denormalize(model.decode_tokens(final).float(), mean, std)
            for i, img in zip(idx.tolist(), to_uint8(plain01)):
                save_png(img, plain_results / f"image_{i:03d}.png")
        if record:  # decode the intermediate steps of the requested images only
            k = min(len(idx), save_steps - int(idx[0]))
            history = [(t[:k], s[:k]) for t, s in history]
            condition = (images[:k], known[:k]) if conditional else None
            masks, decoded = step_pictures(model, history, masked01[:k], mean, std, precision_context,
                                           condition)
            for j, i in enumerate(idx.tolist()[:k]):
                save_png(masks[j], out_dir / "mask_scheduling" / f"image_{i:03d}.png")
                save_png(decoded[j], out_dir / "imga" / f"image_{i:03d}.png")
    return results


@torch.inference_mode()
def generate(model: MaskGit, n: int, out_dir, total_iter: int = 12, mask_func: str | None = None,
             batch_size: int = 32, seed: int = 0, precision: str = "fp32",
             temperature: float | None = None, choice_temperature: float | None = None,
             conditional: bool = False) -> Path:
    """Unconditional samples: start from all [MASK] and decode (decoding settings left at
    None come from the model's config); `conditional` decodes through the attached
    conditional VQGAN under an all-hole mask, i.e. by its decoder alone."""
    check_schedule_args(total_iter, -1)
    device = next(model.transformer.parameters()).device
    gamma = model.gamma_func(mask_func) if mask_func else model.gamma
    mean, std = normalization(model.vq_config, "test")
    results = ensure_writable_dir(Path(out_dir) / "test_results")
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        tokens = torch.full((len(idx), model.num_image_tokens), model.mask_token_id, device=device)
        res = model.vq_config["img_resolution"]
        condition = (torch.zeros(len(idx), 3, res, res, device=device),  # nothing known
                     torch.zeros(len(idx), 1, res, res, device=device)) if conditional else None
        out, _, _ = model.complete(tokens, total_iter, image_generators(idx, seed, device), gamma,
                                   autocast=lambda: autocast(device, precision),
                                   temperature=temperature, choice_temperature=choice_temperature,
                                   condition=condition)
        for i, img in zip(idx, to_uint8(denormalize(out, mean, std))):
            save_png(img, results / f"image_{i:03d}.png")
    return results


def main(argv=None):
    args = parse_args(argv)
    check_schedule_args(args.total_iter, args.sweet_spot)
    check_positive({"--batch-size": args.batch_size})
    check_positive({flag: v for flag, v in (("--temperature", args.temperature),
                                            ("--choice-temperature", args.choice_temperature))
                    if v is not None}, strict=False)
    if args.mask_func:
        MaskGit.gamma_func(args.mask_func)  # reject an unknown schedule before any work
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model = load_maskgit(args.load_transformer_ckpt_path, args.MaskGitConfig, device, precision,
                         args.conditional_vqgan, int8=args.int8, hole_fill=args.hole_fill,
                         min_known=args.min_known, reencode=args.reencode)
    ensure_writable_dir(args.out)
    if args.generate:
        results = generate(model, args.generate, args.out, args.total_iter, args.mask_func,
                           args.batch_size, args.seed, precision, args.temperature,
                           args.choice_temperature, conditional=bool(args.conditional_vqgan))
    else:
        mean, std = normalization(model.vq_config, "test")
        dataset = MaskedImageDataset(args.test_maskedimage_path, args.test_mask_path,
                                     model.vq_config["img_resolution"], mean, std)
        if args.partial < 1.0:
            dataset = torch.utils.data.Subset(dataset, range(max(1, int(len(dataset) * args.partial))))
        results = inpaint_dataset(model, dataset, args.out, args.total_iter, args.mask_func,
                                  args.sweet_spot, args.batch_size, args.seed, precision,
                                  args.save_steps, args.composite, args.num_workers,
                                  args.temperature, args.choice_temperature,
                                  conditional=bool(args.conditional_vqgan))
    print(f"wrote {results}")
    if args.gt_path:
        from metrics.fid import calculate_fid_given_paths
        from metrics.inception import DEFAULT_MODE
        fid = calculate_fid_given_paths(str(results), args.gt_path, device=device, mode=DEFAULT_MODE)
        print(f"FID ({DEFAULT_MODE}): {fid:.4f}")


if __name__ == "__main__":
    run_cli(main)
