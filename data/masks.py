"""Inpainting masks: generators, painting holes, and the lab's masked test layout.

Convention everywhere: a mask is a uint8 (H, W) array / L-mode PNG with 0 = hole and
255 = known; the hole pixels of a masked image are painted RGB (128, 128, 128).
The lab's test layout is `masked_image/*.png` paired with `mask64/*.png` by sorted order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from data.images import fit_square, list_images, load_rgb, normalize, open_image, to_rgb
from utils import UserError, ensure_writable_dir, run_cli

HOLE, KNOWN = 0, 255
HOLE_RGB = (128, 128, 128)
HOLE_FRACTION = (0.10, 0.30)     # lab and box masks
OUTPAINT_FRACTION = (0.25, 0.50)  # outpaint frames: a wider hole, since the whole border is lost


def hole_fraction(mask: np.ndarray) -> float:
    return float((mask == HOLE).mean())


def _draw_until(rng: np.random.Generator, size: int, draw_one) -> np.ndarray:
    """Add shapes with `draw_one(draw, rng, size)` until the hole fraction reaches a
    target drawn uniformly in HOLE_FRACTION. A shape that would push the fraction past
    the upper bound is undone; once the lower bound is met such a shape ends the mask
    instead, so the loop stays short. Every shape covers under 20% of the image, so
    below the lower bound no shape can overshoot: the result always lies in HOLE_FRACTION.
    """
    lo, hi = HOLE_FRACTION
    target = rng.uniform(lo, hi)
    im, frac = Image.new("L", (size, size), KNOWN), 0.0
    while frac < target:
        trial = im.copy()
        draw_one(ImageDraw.Draw(trial), rng, size)
        trial_frac = hole_fraction(np.asarray(trial))
        if trial_frac <= hi:
            im, frac = trial, trial_frac
        elif frac >= lo:
            break
    return np.array(im)


def _stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A DeepFill-style brush stroke: a thick polyline with round joints, or a blob."""
    if rng.random() < 0.25:  # blob: an ellipse of radius 6-14% of the side
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.06, 0.14, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=HOLE)
        return
    width = max(1, round(rng.uniform(0.05, 0.12) * size))
    points = [tuple(rng.uniform(0, size, 2))]
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(rng.integers(1, 5)):  # 1-4 segments that wander, like a hand stroke
        angle += rng.uniform(-np.pi / 2, np.pi / 2)
        length = rng.uniform(0.08, 0.25) * size
        x, y = points[-1]
        points.append((np.clip(x + length * np.cos(angle), 0, size - 1),
                       np.clip(y + length * np.sin(angle), 0, size - 1)))
    draw.line(points, fill=HOLE, width=width)
    r = width / 2
    for x, y in points:  # round caps and joints
        draw.ellipse([x - r, y - r, x + r, y + r], fill=HOLE)


def _box(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    w, h = np.round(rng.uniform(0.15, 0.40, 2) * size).astype(int)
    x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=HOLE)


def lab_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Free-form brush strokes and blobs; hole fraction in [0.10, 0.30]."""
    return _draw_until(rng, size, _stroke)


def box_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """One or more axis-aligned rectangles; hole fraction in [0.10, 0.30]."""
    return _draw_until(rng, size, _box)


def outpaint_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Known centre square, hole = a border frame of one random width b on all sides.

    The hole fraction 1 - (1 - 2b/size)^2 is kept in OUTPAINT_FRACTION [0.25, 0.50]
    (b = 5..9 px at 64x64).
    """
    lo, hi = OUTPAINT_FRACTION
    b_min = int(np.ceil(size * (1 - np.sqrt(1 - lo)) / 2))
    b_max = max(b_min, int(np.floor(size * (1 - np.sqrt(1 - hi)) / 2)))
    b = rng.integers(b_min, b_max + 1)
    mask = np.full((size, size), HOLE, np.uint8)
    mask[b:size - b, b:size - b] = KNOWN
    return mask


MASK_GENERATORS = {"lab": lab_mask, "box": box_mask, "outpaint": outpaint_mask}


def get_mask_generator(kind: str):
    if kind not in MASK_GENERATORS:
        raise UserError(f"unknown mask kind '{kind}'; choose one of {', '.join(MASK_GENERATORS)}")
    return MASK_GENERATORS[kind]


def mask_rng(seed: int, i: int) -> np.random.Generator:
    """Mask i's own stream, so adding images never changes earlier masks."""
    return np.random.default_rng([seed, i])


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) image, (H, W) mask -> copy with hole pixels painted HOLE_RGB."""
    assert image.shape[:2] == mask.shape, f"image {image.shape} vs mask {mask.shape}"
    out = image.copy()
    out[mask < 128] = HOLE_RGB
    return out


# ----------------------------------------------------------------------------- files

def make_masked_set(src: str | Path | np.ndarray, out_dir: str | Path, kind: str = "lab",
                    seed: int = 0, limit: int | None = None, resolution: int = 64,
                    names: list[str] | None = None) -> Path:
    """Write the lab's test layout for the images of `src`:

        out_dir/masked_image/NAME.png   image with holes painted (128, 128, 128)
        out_dir/mask64/NAME.png         L-mode mask, 0 = hole, 255 = known
        out_dir/gt/NAME.png             the unmasked image at `resolution` (for FID)

    `src` is a folder (NAME = each file's stem) or a uint8 array (N, resolution,
    resolution, 3) with `names` (default image_00000.png, ...). Mask i is drawn from
    mask_rng(seed, i). Returns out_dir.
    """
    generate = get_mask_generator(kind)
    if isinstance(src, np.ndarray):
        assert src.dtype == np.uint8 and src.shape[1:] == (resolution, resolution, 3), src.shape
        names = names or [f"image_{i:05d}.png" for i in range(len(src))]
        assert len(names) == len(src), f"{len(names)} names for {len(src)} images"
        items = [(Path(n).stem + ".png", (lambda im=im: im)) for n, im in zip(names, src)]
    else:
        paths = list_images(src)
        items = [(p.stem + ".png", (lambda p=p: load_rgb(p, resolution))) for p in paths]
    items = items[:limit]
    if len({n for n, _ in items}) < len(items):
        raise UserError(f"{src} holds files with the same name but different extensions; "
                        f"rename them so every output NAME.png is unique")

    out_dir = Path(out_dir)
    dirs = [ensure_writable_dir(out_dir / d) for d in ("masked_image", "mask64", "gt")]
    for i, (name, load) in enumerate(items):
        image, mask = load(), generate(mask_rng(seed, i), resolution)
        for d, arr in zip(dirs, (apply_mask(image, mask), mask, image)):
            Image.fromarray(arr).save(d / name)
    return out_dir


class MaskedImageDataset(Dataset):
    """The lab's test layout: masked_image/*.png paired with mask64/*.png by sorted order.

    Decoded once at construction (test sets are small), so every size or pairing
    problem surfaces before any model runs. Item i is
    (image (3, H, W) normalised, known (1, H, W) bool with True = known pixel, i).
    """

    def __init__(self, masked_dir: str | Path, mask_dir: str | Path, resolution: int, mean, std):
        self.masked_paths = list_images(masked_dir, flag="the masked-image folder")
        self.mask_paths = list_images(mask_dir, flag="the mask folder")
        n, m = len(self.masked_paths), len(self.mask_paths)
        if n != m:
            raise UserError(f"{n} masked images in {masked_dir} but {m} masks in {mask_dir}; "
                            f"every masked image needs exactly one mask (paired by sorted name)")
        self.mean, self.std = mean, std
        images, known = [], []
        for image_path, mask_path in zip(self.masked_paths, self.mask_paths):
            image, mask = open_image(image_path), open_image(mask_path)
            if image.size != mask.size:
                raise UserError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but image "
                                f"{image_path} is {image.size[0]}x{image.size[1]}; "
                                f"each mask must match its image's size")
            image = fit_square(to_rgb(image), resolution)
            mask = fit_square(mask.convert("L"), resolution, Image.NEAREST)  # keep it binary
            images.append(np.asarray(image).transpose(2, 0, 1))  # (3, H, W)
            known.append(np.asarray(mask)[None] >= 128)           # (1, H, W)
        self.images = torch.from_numpy(np.stack(images))  # (N, 3, H, W) uint8
        self.known = torch.from_numpy(np.stack(known))    # (N, 1, H, W) bool

    def __len__(self) -> int:
        return len(self.masked_paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = normalize(self.images[i].float() / 255, self.mean, self.std)
        return image, self.known[i], i


def main(argv=None) -> None:
    """`python -m data.masks --src FOLDER --out DIR --kind lab|box|outpaint --seed 0 [--limit N]`"""
    import argparse
    p = argparse.ArgumentParser(description="Write a masked test set (masked_image/, mask64/, gt/).")
    p.add_argument("--src", required=True, help="folder of images to mask")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", default="lab", choices=sorted(MASK_GENERATORS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="mask only the first N images")
    p.add_argument("--resolution", type=int, default=64)
    args = p.parse_args(argv)
    out = make_masked_set(args.src, args.out, args.kind, args.seed, args.limit, args.resolution)
    print(f"wrote {len(list_images(out / 'masked_image'))} masked images to {out}")


if __name__ == "__main__":
    run_cli(main)
