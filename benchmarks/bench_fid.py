"""FID benchmarks: the exact Fréchet step vs scipy.linalg.sqrtm, feature extraction
speed vs a naive baseline, and (--report) reference FIDs of the cat_face data.

    python benchmarks/bench_fid.py                      # (a) + (b)
    python benchmarks/bench_fid.py --report             # + halves of val, val vs train
    python benchmarks/bench_fid.py --skip-scipy         # sqrtm takes ~15 s per call here
    python benchmarks/bench_fid.py --mode legacy_tensorflow   # another preprocessing convention

`run(args) -> dict` returns every figure (also printed as it is measured), so
`benchmarks/run_all.py` can call it. Features and statistics are cached per --mode.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics.fid import load_images, read_statistics, write_statistics  # noqa: E402
from metrics.frechet import compute_statistics, frechet_distance, frechet_distance_sqrtm  # noqa: E402
from metrics.inception import DEFAULT_MODE, MODES, inception_features, load_inception, preprocess  # noqa: E402

CAT_FACE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "cat_face"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


class Figures(dict):
    """A dict of figures that prints each one as it is recorded (long runs log progress)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        text = f"{value:.6g}" if isinstance(value, float) else value
        print(f"{key}: {text}", flush=True)


# ----------------------------------------------------------------------------- (a) Fréchet step

def compare_frechet(name: str, stats1, stats2, skip_scipy: bool, figures: Figures) -> float:
    """Our exact Fréchet distance (best of 3 calls) vs scipy's sqrtm (one call, ~15 s) on
    the same statistics."""
    calls = [timed(frechet_distance, *stats1, *stats2) for _ in range(3)]  # (FID, seconds)
    ours = calls[0][0]
    figures[f"{name}_frechet_ours_s"] = min(seconds for _, seconds in calls)
    figures[f"{name}_fid"] = ours
    if not skip_scipy:
        ref, figures[f"{name}_frechet_scipy_s"] = timed(frechet_distance_sqrtm, *stats1, *stats2)
        figures[f"{name}_fid_scipy"] = ref
        figures[f"{name}_fid_rel_diff"] = abs(ours - ref) / abs(ref)
        figures[f"{name}_frechet_speedup"] = (figures[f"{name}_frechet_scipy_s"]
                                             / figures[f"{name}_frechet_ours_s"])
    return ours


# ----------------------------------------------------------------------------- (b) extraction

@torch.inference_mode()
def compare_extractors(images: torch.Tensor, batch_size: int, figures: Figures,
                       mode: str = DEFAULT_MODE) -> None:
    """ms/image of model variants on the same batches, interleaved batch by batch so that
    load from other processes hits every variant alike. Wall time and process CPU time
    (the latter is robust to a shared, oversubscribed machine). 'naive' is the plain
    eager fp32 NCHW model; 'ours' is what `inception_features` does. Also times `preprocess`
    in `mode` (resize and scaling, outside the network)."""
    eager = load_inception("cpu")
    with warnings.catch_warnings():  # both are deprecated; measured to justify not using them
        warnings.simplefilter("ignore")
        frozen, optimized = torch.jit.freeze(eager), torch.jit.optimize_for_inference(eager)
    variants = {
        "naive": (eager, torch.contiguous_format),
        "ours_channels_last": (eager, torch.channels_last),
        "freeze_channels_last": (frozen, torch.channels_last),
        "optimize_for_inference_channels_last": (optimized, torch.channels_last),
    }
    warm = preprocess(images[:batch_size], mode)
    for model, layout in variants.values():  # the TorchScript executor specialises on the first calls
        for _ in range(2):
            model(warm.contiguous(memory_format=layout))
    wall, cpu = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0.0)
    outputs = {name: [] for name in variants}
    preprocess_s = 0.0
    for start in range(0, len(images), batch_size):
        batch, took = timed(preprocess, images[start:start + batch_size], mode)
        preprocess_s += took
        for name, (model, layout) in variants.items():
            cpu_start = time.process_time()
            out, took = timed(model, batch.contiguous(memory_format=layout))
            cpu[name] += time.process_time() - cpu_start
            wall[name] += took
            outputs[name].append(out)
    figures[f"preprocess_{mode}_ms_per_image"] = 1000 * preprocess_s / len(images)
    reference = torch.cat(outputs["naive"])
    for name in variants:
        figures[f"extract_{name}_wall_ms_per_image"] = 1000 * wall[name] / len(images)
        figures[f"extract_{name}_cpu_ms_per_image"] = 1000 * cpu[name] / len(images)
        figures[f"extract_{name}_wall_speedup_vs_naive"] = wall["naive"] / wall[name]
        figures[f"extract_{name}_cpu_speedup_vs_naive"] = cpu["naive"] / cpu[name]
        rel = (torch.cat(outputs[name]) - reference).abs().max() / reference.abs().max()
        figures[f"extract_{name}_max_rel_diff"] = float(rel)


def folder_features(folder: Path, cache_dir: Path, batch_size: int, figures: Figures,
                    name: str, chunk: int = 500, limit: int | None = None,
                    mode: str = DEFAULT_MODE) -> np.ndarray:
    """Inception features (N, 2048) in `mode` of a folder (its first `limit` images), cached
    in chunks of `chunk` images as .npy files (per folder and mode), so reruns (and runs
    interrupted on a busy machine) skip finished work."""
    images, figures[f"{name}_load_s"] = timed(load_images, folder, num_workers=2)
    images = images[:limit]
    tag = hashlib.md5(str(folder.resolve()).encode()).hexdigest()[:8]  # cache per folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts, extracted, took = [], 0, 0.0
    for start in range(0, len(images), chunk):
        end = min(start + chunk, len(images))
        part = cache_dir / f"{name}_{tag}_{mode}_{start:06d}-{end:06d}.npy"
        if not part.is_file():
            feats, seconds = timed(inception_features, images[start:end],
                                   load_inception("cpu"), batch_size, mode)
            np.save(part, feats)
            extracted, took = extracted + len(feats), took + seconds
            print(f"{name}: {start + len(feats)}/{len(images)} images", flush=True)
        parts.append(np.load(part))
    if extracted:
        figures[f"{name}_extract_s"] = took
        figures[f"{name}_images_per_s"] = extracted / took
    return np.concatenate(parts)


def first_images(folder: Path, n: int, cache_dir: Path) -> Path:
    """A folder of symlinks to the first `n` images of `folder` (stand-in generated set)."""
    out = cache_dir / f"{folder.name}_first{n}"
    out.mkdir(parents=True, exist_ok=True)
    for file in sorted(folder.glob("*.png"))[:n]:
        if not (out / file.name).exists():
            (out / file.name).symlink_to(file)
    return out


# ----------------------------------------------------------------------------- driver

def run(args) -> dict:
    figures = Figures()
    figures["torch_threads"] = torch.get_num_threads()
    figures["mode"] = mode = args.mode
    cache_dir = Path(args.cache_dir)
    val = Path(args.val)

    # Ground-truth statistics, computed once and cached as an .npz (with its mode).
    gt_stats_path = Path(args.gt_stats or cache_dir / f"cat_face_val_stats_{mode}.npz")
    if gt_stats_path.is_file():
        gt_stats = read_statistics(gt_stats_path, mode)
    else:
        start = time.perf_counter()
        val_feats = folder_features(val, cache_dir, args.batch_size, figures, "val", mode=mode)
        gt_stats = compute_statistics(val_feats)
        gt_stats_path.parent.mkdir(parents=True, exist_ok=True)
        write_statistics(gt_stats_path, *gt_stats, mode)
        figures["gt_stats_create_s"] = time.perf_counter() - start

    # (b) End to end: N generated images against the cached ground truth.
    pred = Path(args.pred) if args.pred else first_images(val, args.n, cache_dir)
    start = time.perf_counter()
    images, figures["e2e_load_s"] = timed(load_images, pred, num_workers=2)
    figures["e2e_images"] = len(images)
    feats, figures["e2e_extract_s"] = timed(inception_features, images, load_inception("cpu"),
                                           args.batch_size, mode)
    figures["e2e_images_per_s"] = len(images) / figures["e2e_extract_s"]
    pred_stats = compute_statistics(feats)
    fid, figures["e2e_frechet_s"] = timed(frechet_distance, *pred_stats, *gt_stats)
    figures["e2e_fid_vs_gt"] = fid
    figures["e2e_wall_s"] = time.perf_counter() - start

    compare_extractors(images[:args.baseline_images], args.batch_size, figures, mode)

    # (a) The Fréchet step at 2048-d on real Inception statistics.
    compare_frechet("pred_vs_gt", pred_stats, gt_stats, args.skip_scipy, figures)

    # (c) Reference FIDs of the data itself, for the report. val vs train also times the
    # Fréchet step when both covariances are full rank (more images than dimensions).
    if args.report:
        val_feats = folder_features(val, cache_dir, args.batch_size, figures, "val", mode=mode)
        half = len(val_feats) // 2
        compare_frechet("val_halves", compute_statistics(val_feats[:half]),
                        compute_statistics(val_feats[half:]), True, figures)
        train_feats = folder_features(Path(args.train), cache_dir, args.batch_size, figures, "train",
                                      limit=args.train_limit, mode=mode)
        figures["train_images"] = len(train_feats)
        compare_frechet("val_vs_train", compute_statistics(val_feats),
                        compute_statistics(train_feats), args.skip_scipy, figures)
    return dict(figures)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", help="folder of generated images (default: the first --n images of --val)")
    parser.add_argument("--n", type=int, default=747,
                        help="without --pred: score the first N images of --val")
    parser.add_argument("--val", default=str(CAT_FACE / "val"))
    parser.add_argument("--train", default=str(CAT_FACE / "train"))
    parser.add_argument("--gt-stats", default=None,
                        help="cached ground-truth statistics of --mode; created from --val if missing "
                             "(default: <cache-dir>/cat_face_val_stats_<mode>.npz)")
    parser.add_argument("--cache-dir", default="/tmp/fid_bench", help="cached Inception features")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help="FID preprocessing convention")
    parser.add_argument("--baseline-images", type=int, default=200,
                        help="images on which the extractor variants are compared")
    parser.add_argument("--skip-scipy", action="store_true", help="skip scipy.linalg.sqrtm (~15 s each here)")
    parser.add_argument("--report", action="store_true", help="FID of val halves and val vs train")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="--report: val against the first N train images (default: all)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
