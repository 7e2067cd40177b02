"""FID between predicted images and a ground truth, on GPU or CPU, fully offline.

    python faster-pytorch-fid/fid_score_gpu.py --gt-path val/ --save-stats gt.npz
    python faster-pytorch-fid/fid_score_gpu.py --predicted-path out/ --gt-path gt.npz

Each path is a folder of images, a lab .csv (header, then one 64x64x3 image per
row) or an .npz of cached statistics. All the work is in `metrics.fid`.

--mode picks the preprocessing convention (named as in clean-fid):
  legacy_pytorch     pytorch-fid's, which the lab grades with (default): torch bilinear
                     resize (half-pixel centres), pixels scaled to 2x - 1 of [0, 1]
  legacy_tensorflow  the original TensorFlow FID graph's: TF1 bilinear resize (no
                     half-pixel offset), (x - 128) / 128
  clean              clean-fid's: antialiased PIL bicubic resize in float, (x - 128) / 128
FIDs of different modes do not compare: an .npz records its mode and is refused in another.
"""
import argparse
import sys
from pathlib import Path

# The script lives one folder below the repository root and must run from any cwd.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics.fid import calculate_fid_given_paths, save_statistics  # noqa: E402
from metrics.inception import DEFAULT_MODE, MODES  # noqa: E402
from utils import UserError, run_cli  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predicted-path", help="folder | .csv | .npz of the generated images")
    parser.add_argument("--gt-path", "--gtcsv-path", dest="gt_path",
                        help="folder | .csv | .npz of the ground truth (--gtcsv-path is the lab's name)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=0, help="threads decoding images")
    parser.add_argument("--dims", type=int, default=2048, help="feature size (only 2048, pool3)")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                        help=f"preprocessing convention (default {DEFAULT_MODE}, the lab's; see above)")
    parser.add_argument("--save-stats", metavar="OUT.npz",
                        help="save mean/cov of --gt-path (or of --predicted-path if alone) to OUT.npz")
    args = parser.parse_args(argv)
    options = dict(device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                   mode=args.mode)

    gt_path = args.gt_path
    if args.save_stats:
        source = gt_path or args.predicted_path
        if source is None:
            raise UserError("--save-stats needs --gt-path or --predicted-path to read images from")
        save_statistics(source, args.save_stats, **options)
        print(f"saved {args.mode} statistics of {source} to {args.save_stats}")
        if not (gt_path and args.predicted_path):
            return
        gt_path = args.save_stats  # just computed: do not read the ground truth twice
    if not (args.predicted_path and gt_path):
        raise UserError("pass both --predicted-path and --gt-path (or --gtcsv-path), "
                        "or one path with --save-stats")
    fid = calculate_fid_given_paths(args.predicted_path, gt_path, dims=args.dims, **options)
    print(f"FID ({args.mode}): {fid}")


if __name__ == "__main__":
    run_cli(main)
