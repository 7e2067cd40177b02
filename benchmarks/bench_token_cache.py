"""Stage-2 epoch time with the token cache against re-encoding every batch.

    python benchmarks/bench_token_cache.py [--quick] [--images 256] [--config lab]

The VQGAN is frozen during stage 2, so its tokens for an image never change. Both epochs
run the same training step (benchmarks/bench_train.train_step at the config's precision)
over the same generated images; they differ only in where the token ids come from:
  re-encode  the VQGAN encoder on every batch, every epoch (the lab's loop);
  cached     the ids from data.tokens.cached_tokens, read once per run and kept in memory
             (as training_transformer.py does).
Building the cache (a miss: encode everything once and save) and reading it (a hit, once
per training run) are reported on their own.
The tiny config by default: a few hundred images in a couple of minutes on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import train_step  # noqa: E402
from benchmarks.common import (Row, add_common_args, build_maskgit, generated_images,  # noqa: E402
                               maskgit_config, table, timed)
from data import normalization, normalize  # noqa: E402
from data.tokens import cached_tokens  # noqa: E402
from training_transformer import build_optimizer  # noqa: E402
from runtime.precision import autocast, resolve_device, resolve_precision  # noqa: E402
from runtime.checkpoints import save_checkpoint  # noqa: E402


def run(device=None, config: str = "tiny", quick: bool = False, n_images: int | None = None,
        batch: int | None = None) -> list[Row]:
    device = resolve_device(device)
    n = n_images or (64 if quick else 256)
    tp = maskgit_config(config)["train_param"]
    batch = min(n, batch or tp["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        # the cache is keyed by the VQGAN checkpoint's hash (an untrained VQGAN is never cached)
        ckpt = Path(tmp) / "vqgan.pt"
        save_checkpoint(build_maskgit("cpu", config).vqgan.state_dict(), ckpt)
        model = build_maskgit(device, config, vq_ckpt=ckpt)
        images = generated_images(n, model.vq_config["img_resolution"])  # uint8 (n, 3, R, R)
        mean, std = normalization(model.vq_config, "train")
        opt = build_optimizer(model.transformer, tp)
        chosen = resolve_precision(tp["precision"], device)
        precision = lambda: autocast(device, chosen)
        starts = range(0, n - batch + 1, batch)

        def cache():
            return cached_tokens(model.vqgan, ckpt, images, mean, std, device, tmp)[0]  # (n, N)

        def epoch_reencode():
            for i in starts:
                x = normalize(images[i:i + batch].to(device).float() / 255, mean, std)
                train_step(model, model.encode_to_z(x)[1], opt, precision)

        def epoch_cached():
            for i in starts:
                train_step(model, tokens[i:i + batch].to(device), opt, precision)

        once = lambda fn: timed(fn, device, repeats=1, warmup=0)
        t_build = once(cache)  # a miss: encode all images and write the cache
        t_load = once(cache)  # a hit
        tokens = cache()
        train_step(model, tokens[:batch].to(device), opt, precision)  # untimed warm-up
        t_cached = once(epoch_cached)
        t_reencode = once(epoch_reencode)
    saved = t_reencode - t_cached
    return [
        Row(f"stage-2 epoch, {n} images ({config})", t_cached, t_reencode, "s", higher=False,
            note="token cache hit vs VQGAN encode per batch", precision=chosen),
        Row("token cache build (once per checkpoint)", t_build, unit="s", precision="fp32",
            note=f"repaid after {t_build / saved:.2f} epochs" if saved > 0 else "never repaid"),
        Row("token cache read (once per run)", t_load, unit="s", note="hash checks + load"),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.set_defaults(config="tiny")
    p.add_argument("--images", type=int, default=None, help="images per epoch (default 256)")
    p.add_argument("--batch", type=int, default=None, help="default: the config's batch_size")
    args = p.parse_args(argv)
    print(table(run(args.device, args.config, args.quick, args.images, args.batch)))


if __name__ == "__main__":
    main()
