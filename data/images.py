"""Image files -> uint8 arrays -> normalised tensors.

Every image enters the suite through `load_rgb`: any mode becomes RGB, the shorter
side is resized to `resolution` (bicubic) and the centre is cropped to a square.
Tensors are (..., 3, H, W); `normalize` maps [0, 1] to the VQGAN's input range
(our configs use mean = std = 0.5, i.e. [-1, 1]) and `denormalize` maps back.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm import tqdm

from utils import UserError, require_keys

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # compared lower-cased
ON_BAD = ("error", "skip")


# ----------------------------------------------------------------------------- files

def list_images(folder: str | Path, flag: str = "the image path") -> list[Path]:
    """Image files directly inside `folder`, sorted by name.

    Hidden files are ignored: macOS `._name.png` companions are not images.
    `flag` names the CLI option in the error message (e.g. "--data").
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise UserError(f"{folder} {what}; point {flag} at a folder of images")
    paths = sorted((p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                    and p.is_file()), key=lambda p: p.name)
    if not paths:
        raise UserError(f"{folder} contains no images ({'/'.join(IMAGE_EXTENSIONS)}); "
                        f"point {flag} at a folder of images")
    return paths


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode `path`, so a truncated file fails here, not later.

    PIL decodes lazily; `.load()` forces it, and with ImageFile.LOAD_TRUNCATED_IMAGES
    left False a short file raises instead of coming back half grey.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # phone photos store rotation in EXIF
    except Exception as e:  # PIL raises OSError, SyntaxError, EOFError, zlib.error, ...
        raise UserError(f"cannot read image {path} ({type(e).__name__}: {e}); "
                        f"replace or delete the file") from None


def fit_square(im: Image.Image, resolution: int, resample=Image.BICUBIC) -> Image.Image:
    """Resize the shorter side to `resolution`, then centre-crop a square.

    Images already `resolution` x `resolution` are returned untouched (no resampling blur).
    """
    w, h = im.size
    if (w, h) == (resolution, resolution):
        return im
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    im = im.resize((nw, nh), resample)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on black, so fully transparent
    pixels (whose stored colour is arbitrary) all become black."""
    if "A" in im.getbands() or "transparency" in im.info:
        im = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, im).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str | Path, resolution: int) -> np.ndarray:
    """Read `path` as uint8 (resolution, resolution, 3) RGB."""
    return np.asarray(fit_square(to_rgb(open_image(path)), resolution))


# ----------------------------------------------------------------------------- value ranges

def _stats(mean, std, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    as_t = lambda v: torch.as_tensor(v, dtype=like.dtype, device=like.device).view(3, 1, 1)
    return as_t(mean), as_t(std)


def normalize(x01: torch.Tensor, mean, std) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> (x - mean) / std per channel."""
    m, s = _stats(mean, std, x01)
    return (x01 - m) / s


def denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of `normalize`, clamped to [0, 1] (decoder outputs overshoot)."""
    m, s = _stats(mean, std, x)
    return (x * s + m).clamp(0, 1)


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [0, 1] -> uint8 numpy (..., H, W, 3), ready for Image.fromarray."""
    x = (x01.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def normalization(cfg: dict, split: str = "train") -> tuple[list[float], list[float]]:
    """(mean, std) from a VQGAN config's `normalization: {train: {mean, std}, test: ...}`."""
    require_keys(cfg, ["normalization"], "VQGAN")
    require_keys(cfg["normalization"], [split], "normalization")
    stats = cfg["normalization"][split]
    require_keys(stats, ["mean", "std"], f"normalization.{split}")
    return list(stats["mean"]), list(stats["std"])


# ----------------------------------------------------------------------------- dataset

class ImageFolderDataset(Dataset):
    """Every image of a folder, decoded once at construction into one uint8 tensor.

    Our datasets are small 64x64 sets (12000 images = 147 MB), so holding them in
    memory beats re-decoding PNGs every epoch, and `.uint8` doubles as the input for
    FID statistics and token caching.

    on_bad: "error" raises on the first unreadable file; "skip" warns (one stderr
    line per file) and drops it. `partial` keeps the first fraction of the sorted
    files and `limit` at most that many (quick runs).
    """

    def __init__(self, folder: str | Path, resolution: int, mean, std, on_bad: str = "error",
                 partial: float | None = None, limit: int | None = None):
        if on_bad not in ON_BAD:
            raise UserError(f"unknown on_bad '{on_bad}'; choose one of {', '.join(ON_BAD)}")
        if partial is not None and not 0 < partial <= 1:
            raise UserError(f"--partial {partial} must be a fraction in (0, 1]")
        paths = list_images(folder)
        if partial is not None:
            paths = paths[:max(1, int(len(paths) * partial))]
        if limit is not None:
            paths = paths[:limit]
        self.folder, self.mean, self.std = Path(folder), mean, std

        images = np.empty((len(paths), 3, resolution, resolution), np.uint8)  # (N, 3, H, W)
        kept = []
        for path in tqdm(paths, desc=f"loading {folder}", disable=len(paths) <= 1000):
            try:
                images[len(kept)] = load_rgb(path, resolution).transpose(2, 0, 1)
            except UserError as e:
                if on_bad == "error":
                    raise
                print(f"warning: skipping {path}: {str(e).split('; ')[0]}", file=sys.stderr)
                continue
            kept.append(path)
        if not kept:
            raise UserError(f"all {len(paths)} images in {folder} are unreadable; "
                            f"point the image path at a folder of valid images")
        self.paths = kept
        self.uint8 = torch.from_numpy(images[:len(kept)])  # (N, 3, H, W) uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return normalize(self.uint8[i].float() / 255, self.mean, self.std)  # (3, H, W)
