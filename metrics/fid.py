"""FID between two image sets, each given as a folder, a lab CSV or cached statistics.

Layers, each callable on its own:
    load_images(path)             -> uint8 (N, 3, H, W)
    statistics_of_images(images)  -> (mu, sigma) of Inception pool3 features
    read_statistics(npz, mode)    -> (mu, sigma) of a cached .npz made in that mode
    statistics_of_path(path)      -> (mu, sigma); an .npz is read, not recomputed
    write_statistics(out, mu, sigma, mode) -> the .npz, atomically, with its mode
    save_statistics(path, out)    -> caches (mu, sigma) so a ground truth is read once
    calculate_fid_given_paths(p1, p2) -> float

Every function that computes or reads statistics takes `mode` (metrics.inception.MODES,
default legacy_pytorch, the lab grader's). An .npz records the mode it was made in, and
reading it in another mode, or reading one that records no mode, is a UserError.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.images import list_images, open_image, to_rgb
from metrics.frechet import compute_statistics, frechet_distance
from metrics.inception import DEFAULT_MODE, FEATURE_DIM, check_mode, inception_features, load_inception
from runtime.precision import resolve_device
from utils import UserError, ensure_writable_dir

CSV_IMAGE_SHAPE = (64, 64, 3)  # lab CSV: one image per row, HWC, values 0..255


# ----------------------------------------------------------------------------- images

def _read_image(file: Path) -> np.ndarray:
    return np.asarray(to_rgb(open_image(file)))  # (H, W, 3) uint8


def load_folder(folder: Path, num_workers: int = 0) -> torch.Tensor:
    """Images of `folder` (not recursive, sorted by name) as uint8 (N, 3, H, W).

    Images whose size differs from the first one's are resized (bilinear) to it.
    `num_workers` > 0 decodes in threads (PIL releases the GIL while decoding).
    """
    files = list_images(folder, "the FID path")
    if num_workers > 0:
        with ThreadPoolExecutor(num_workers) as pool:
            arrays = list(pool.map(_read_image, files))
    else:
        arrays = [_read_image(f) for f in files]
    h, w = arrays[0].shape[:2]
    odd = [i for i, a in enumerate(arrays) if a.shape[:2] != (h, w)]
    if odd:
        warnings.warn(f"{len(odd)} image(s) in {folder} differ in size from {files[0].name} "
                      f"({w}x{h}), e.g. {files[odd[0]].name}; resized them to {w}x{h}")
        for i in odd:
            arrays[i] = np.asarray(Image.fromarray(arrays[i]).resize((w, h), Image.BILINEAR))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def load_csv(file: Path) -> torch.Tensor:
    """Lab CSV: a header line, then one image per line as 64*64*3 values (HWC, 0..255)."""
    size = int(np.prod(CSV_IMAGE_SHAPE))
    rows = []
    with open(file) as f:
        next(f, None)  # header
        for line_no, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                values = np.array(line.split(","), dtype=np.float64)
            except ValueError:
                raise UserError(f"{file} line {line_no}: not all values are numbers; "
                                f"each row must hold {size} pixel values") from None
            if values.size != size:
                raise UserError(f"{file} line {line_no} has {values.size} values, expected "
                                f"{size} (one 64x64x3 image per row); fix or drop that row")
            if values.min() < 0 or values.max() > 255:
                raise UserError(f"{file} line {line_no} has values outside 0..255; "
                                f"store pixels as 0..255")
            rows.append(np.rint(values).astype(np.uint8).reshape(CSV_IMAGE_SHAPE))  # (64, 64, 3)
    if not rows:
        raise UserError(f"{file} holds no image rows; expected a header line, then one image per row")
    return torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 64, 64)


def load_images(path: str | Path, num_workers: int = 0) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W), N >= 2, from a folder of images or a lab `.csv`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a folder of images, a .csv or a .npz")
    if path.suffix.lower() == ".csv":
        images = load_csv(path)
    elif path.is_dir():
        images = load_folder(path, num_workers)
    else:
        raise UserError(f"{path} is neither a folder, a .csv nor a .npz of statistics")
    if len(images) < 2:
        raise UserError(f"{path} holds {len(images)} image; FID needs at least 2 "
                        f"(thousands for a meaningful value)")
    return images


# ----------------------------------------------------------------------------- statistics

def statistics_of_images(images: torch.Tensor, device=None, batch_size: int = 50,
                         mode: str = DEFAULT_MODE):
    """(mu (2048,), sigma (2048, 2048)) float64 of the Inception features of uint8 images,
    preprocessed as `mode`."""
    model = load_inception(resolve_device(None if device is None else str(device)))
    return compute_statistics(inception_features(images, model, batch_size, mode))


def read_statistics(path: str | Path, mode: str = DEFAULT_MODE):
    """(mu, sigma) float64 of a cached .npz, which must have been made in `mode`."""
    path, mode = Path(path), check_mode(mode)
    if not path.is_file():
        raise UserError(f"statistics file {path} does not exist; create it with --save-stats --mode {mode}")
    try:
        with np.load(path) as data:
            stored = str(data["mode"]) if "mode" in data.files else None
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except KeyError:
        raise UserError(f"{path} lacks 'mu' or 'sigma'; create it with --save-stats --mode {mode}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npz ({e}); "
                        f"create it with --save-stats --mode {mode}") from None
    if stored is None:  # older files of this suite were legacy_tensorflow, pytorch-fid's legacy_pytorch
        raise UserError(f"{path} does not record its FID mode (made before --mode existed, or by "
                        f"another tool); recompute it with --save-stats --mode {mode}")
    if stored != mode:
        raise UserError(f"{path} holds {stored} statistics, not {mode}: FIDs of different modes "
                        f"do not compare; pass --mode {stored}, or recompute it with "
                        f"--save-stats --mode {mode}")
    return mu, sigma


def statistics_of_path(path: str | Path, device=None, batch_size: int = 50, num_workers: int = 0,
                       mode: str = DEFAULT_MODE):
    """(mu, sigma) of a folder or a lab .csv in `mode`, or read from a cached .npz of that mode."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return read_statistics(path, mode)
    return statistics_of_images(load_images(path, num_workers), device, batch_size, check_mode(mode))


def write_statistics(out_npz: str | Path, mu: np.ndarray, sigma: np.ndarray, mode: str) -> None:
    """Write mu, sigma and the `mode` they were computed in to `out_npz` (atomically)."""
    out_npz = Path(out_npz)
    fd, tmp = tempfile.mkstemp(dir=out_npz.parent, prefix=f".{out_npz.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, mode=np.array(check_mode(mode)))
        os.replace(tmp, out_npz)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_statistics(path: str | Path, out_npz: str | Path, device=None,
                    batch_size: int = 50, num_workers: int = 0, mode: str = DEFAULT_MODE):
    """Compute (mu, sigma) of `path` in `mode` and write them, with the mode, to `out_npz`
    (atomically). Returns them."""
    out_npz = Path(out_npz)
    if out_npz.suffix != ".npz":
        raise UserError(f"statistics file {out_npz} must end in .npz")
    ensure_writable_dir(out_npz.parent)  # before the slow part
    mu, sigma = statistics_of_path(path, device, batch_size, num_workers, mode)
    write_statistics(out_npz, mu, sigma, mode)
    return mu, sigma


def calculate_fid_given_paths(path1: str | Path, path2: str | Path, device=None,
                              batch_size: int = 50, num_workers: int = 0,
                              dims: int = FEATURE_DIM, mode: str = DEFAULT_MODE) -> float:
    """FID between two image sets in `mode` (metrics.inception.MODES); each path is a
    folder, a lab .csv or a cached .npz, which must have been made in `mode`."""
    if dims != FEATURE_DIM:
        raise UserError(f"dims={dims} is not supported; only the {FEATURE_DIM}-d pool3 "
                        f"features of the standard FID Inception are")
    check_mode(mode)
    paths = [Path(path1), Path(path2)]
    stats = [None, None]
    # the cheap failures first (missing paths in order, then an .npz of another mode), so
    # that they come before minutes of Inception
    def cost(i: int) -> int:
        return 0 if not paths[i].exists() else 1 if paths[i].suffix.lower() == ".npz" else 2
    for i in sorted(range(2), key=cost):
        stats[i] = statistics_of_path(paths[i], device, batch_size, num_workers, mode)
    return frechet_distance(*stats[0], *stats[1])
