"""Every benchmark in one run: one table of figures, baselines and ratios measured in the
same run, written to benchmarks/RESULTS.md as the section of the kind of machine it ran on
(`cpu kind`, e.g. "AMX, native bf16" or "AVX2, no native bf16"); other kinds' sections stay.

    python benchmarks/run_all.py [--quick] [--skip-fid] [--only inpainting fast-paths ...]
                                 [--device cpu] [--config tiny]

--quick is a smoke run (small batches, one repeat, no torch.compile); --config tiny a faster
one still; both write runs/bench/RESULTS_quick.md unless --out says otherwise.
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

from benchmarks import (bench_conditional_decode, bench_fast_paths, bench_inpaint,  # noqa: E402
                        bench_precision, bench_token_cache, bench_train, bench_vqgan_train)
from benchmarks.common import Row, add_common_args, machine, table  # noqa: E402
from runtime.precision import resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
QUICK_RESULTS = Path(__file__).resolve().parents[1] / "runs" / "bench" / "RESULTS_quick.md"
HEADER = """# Benchmark results

One section per kind of machine measured on (`cpu kind`): `run_all.py` replaces the section of
the kind it runs on and keeps every other section and note.
"""
ROOT_RUNS = Path(__file__).resolve().parents[1] / "runs"
# every benchmark, in the order they run; bf16-quality needs --quality-ckpt and --masked-dir
SECTIONS = ("inpainting", "fast-paths", "conditional-decode", "training", "vqgan-training",
            "token-cache", "fid", "bf16-quality")


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
                unit="s", higher=False, precision="fp32",
                note=f"{f['e2e_images_per_s']:.1f} images/s through Inception; "
                     f"FID ({f['mode']}) {f['e2e_fid_vs_gt']:.2f} (first N val images)")]


def section_markers(kind: str) -> tuple[str, str]:
    """The HTML comments that open and close the generated section of one machine kind."""
    return f"<!-- run_all: {kind} -->", f"<!-- end run_all: {kind} -->"


def merge_section(text: str, kind: str, section: str) -> str:
    """`text` (a RESULTS.md) with the generated section of `kind` replaced by `section`, or
    `section` added after the last generated section (after the title if there is none).
    Everything else, other kinds' sections and hand-written notes, is kept as it is."""
    start, end = section_markers(kind)
    block = f"{start}\n{section.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        return head + block + rest.split(end, 1)[1]
    last = text.rfind("<!-- end run_all: ")
    if last >= 0:
        cut = text.index("-->", last) + 3
    else:  # after the title line
        cut = text.index("\n") + 1 if text.startswith("# ") else 0
    return text[:cut].rstrip("\n") + "\n\n" + block + "\n\n" + text[cut:].lstrip("\n")


def write_results(rows: list[Row], info: dict, config: str, argv: list[str], path: Path) -> None:
    """Write this run's table into `path` as the section of this machine's kind
    (info['cpu kind']): a run on another kind of CPU adds its own section and never
    overwrites this one's."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = " ".join(["python benchmarks/run_all.py", *map(shlex.quote, argv)])
    kind = info["cpu kind"]
    lines = [f"## {kind}: run_all, {when}", "", f"`{command}`", "", f"- date: {when}"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "Ratio > 1 means ours is better; `precision` is ours (the lab-style baselines run "
              "fp32). Times are the best of the repeats (other jobs only ever slow a run down); "
              "baseline and ours are measured in the same run. "
              f"Random weights, {config} config (speed does not depend on the weights); the "
              "token cache epoch uses the tiny config. A load average above the core count "
              "means other jobs shared the machine.", "",
              table(rows)]
    text = path.read_text() if path.is_file() else HEADER
    path.write_text(merge_section(text, kind, "\n".join(lines)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                   help="run these benchmarks only (default: all); the section of this kind of "
                        "machine then holds these rows alone")
    p.add_argument("--skip-fid", action="store_true", help="leave out the FID benchmark")
    p.add_argument("--out", default=None,
                   help=f"where to write the Markdown results (default: {RESULTS.name}; with --quick "
                        f"or --config tiny runs/bench/{QUICK_RESULTS.name}, so a smoke run never "
                        f"replaces a measured table)")
    p.add_argument("--quality-ckpt", help="trained transformer: measure bf16's effect on its FID")
    p.add_argument("--masked-dir", help="masked set (with gt/) for --quality-ckpt")
    args = p.parse_args(argv)
    if args.quality_ckpt and not args.masked_dir:
        p.error("--quality-ckpt needs --masked-dir")
    device = args.device
    info = machine(resolve_device(device))
    load_start = os.getloadavg()[0]
    print(", ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    benches = {
        "inpainting": lambda: bench_inpaint.run(device, args.config, args.quick),
        "fast-paths": lambda: bench_fast_paths.run(device, args.config, args.quick,
                                                   compile_=not args.quick),
        "conditional-decode": lambda: bench_conditional_decode.run(device, args.quick),
        "training": lambda: (bench_train.run(device, args.config, args.quick)
                             + bench_train.attention_rows(device, args.quick)),
        "vqgan-training": lambda: bench_vqgan_train.run(device, args.quick),
        "token-cache": lambda: bench_token_cache.run(device, "tiny", args.quick),
        "fid": lambda: fid_rows(args.quick),
        "bf16-quality": lambda: bench_precision.run(
            args.quality_ckpt, args.masked_dir, ROOT_RUNS / "bench" / "precision", device),
    }
    chosen = args.only or [name for name in SECTIONS if not (name == "fid" and args.skip_fid)
                           and not (name == "bf16-quality" and not args.quality_ckpt)]
    rows = []
    for name in chosen:
        print(f"\n== {name}", flush=True)
        new = benches[name]()
        print(table(new), flush=True)
        rows += new
    print("\n" + table(rows))
    info["load average (1 min) at start, end"] = f"{load_start:.1f}, {os.getloadavg()[0]:.1f}"
    out = Path(args.out or (QUICK_RESULTS if args.quick or args.config == "tiny" else RESULTS))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(rows, info, args.config, argv, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
