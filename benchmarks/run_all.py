"""Every benchmark in one run: one table of figures, baselines and ratios measured in the
same run, written to benchmarks/RESULTS.md with the machine it ran on.

    python benchmarks/run_all.py [--quick] [--skip-fid] [--device cpu] [--config tiny]

--quick is a smoke run (small batches, one repeat); --config tiny a faster one still.
The FID figures come from benchmarks/bench_fid.py (cat_face data; skipped with --skip-fid).
With --quality-ckpt and --masked-dir, benchmarks/bench_precision.py adds the bf16-vs-fp32
FID of that trained model.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_inpaint, bench_precision, bench_token_cache, bench_train  # noqa: E402
from benchmarks.common import Row, add_common_args, machine, table  # noqa: E402
from runtime.precision import resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT_RUNS = Path(__file__).resolve().parents[1] / "runs"


def fid_rows(quick: bool) -> list[Row]:
    """The end-to-end FID figure of bench_fid.run (which also prints its own comparisons:
    Inception variants against the eager model; scipy's sqrtm, minutes long, is skipped)."""
    try:
        from benchmarks import bench_fid
    except ImportError as e:
        return [Row("FID end-to-end", float("nan"), note=f"bench_fid unavailable ({e})")]
    args = argparse.Namespace(
        pred=None, n=100 if quick else 747, val=str(bench_fid.CAT_FACE / "val"),
        train=str(bench_fid.CAT_FACE / "train"), gt_stats=None, mode=bench_fid.DEFAULT_MODE,
        cache_dir="/tmp/fid_bench", batch_size=50, baseline_images=50 if quick else 200,
        skip_scipy=True, report=False, train_limit=None)
    f = bench_fid.run(args)
    return [Row(f"FID end-to-end, {f['e2e_images']} images vs cached GT stats", f["e2e_wall_s"],
                unit="s", higher=False,
                note=f"{f['e2e_images_per_s']:.1f} images/s through Inception; "
                     f"FID ({f['mode']}) {f['e2e_fid_vs_gt']:.2f} (first N val images)")]


def write_results(rows: list[Row], info: dict, config: str, argv: list[str], path: Path) -> None:
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = " ".join(["python benchmarks/run_all.py", *map(shlex.quote, argv)])
    lines = ["# Benchmark results", "", f"`{command}`", "", f"- date: {when}"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "Ratio > 1 means ours is better. Times are the best of the repeats (other jobs "
              "only ever slow a run down); baseline and ours are measured in the same run. "
              f"Random weights, {config} config (speed does not depend on the weights); the "
              "token cache epoch uses the tiny config. A load average above the core count "
              "means other jobs shared the machine.", "",
              table(rows), ""]
    path.write_text("\n".join(lines))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--skip-fid", action="store_true", help="leave out the FID benchmark")
    p.add_argument("--out", default=str(RESULTS), help="where to write the Markdown results")
    p.add_argument("--quality-ckpt", help="trained transformer: measure bf16's effect on its FID")
    p.add_argument("--masked-dir", help="masked set (with gt/) for --quality-ckpt")
    args = p.parse_args(argv)
    device = args.device
    info = machine(resolve_device(device))
    load_start = os.getloadavg()[0]
    print(", ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections = [
        ("inpainting", lambda: bench_inpaint.run(device, args.config, args.quick)),
        ("training", lambda: bench_train.run(device, args.config, args.quick)),
        ("token cache", lambda: bench_token_cache.run(device, "tiny", args.quick)),
    ]
    if not args.skip_fid:
        sections.append(("FID", lambda: fid_rows(args.quick)))
    if args.quality_ckpt:
        if not args.masked_dir:
            p.error("--quality-ckpt needs --masked-dir")
        sections.append(("bf16 quality", lambda: bench_precision.run(
            args.quality_ckpt, args.masked_dir, ROOT_RUNS / "bench" / "precision", device)))
    rows = []
    for name, bench in sections:
        print(f"\n== {name}", flush=True)
        new = bench()
        print(table(new), flush=True)
        rows += new
    print("\n" + table(rows))
    info["load average (1 min) at start, end"] = f"{load_start:.1f}, {os.getloadavg()[0]:.1f}"
    write_results(rows, info, args.config, argv, Path(args.out))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
