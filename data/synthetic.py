"""A built-in generated dataset, so tests and the demo need no download.

Each image is a smooth two-colour gradient background with 1-3 solid shapes (circle,
square, triangle) in a palette of saturated colours, ~12-28 px across at 64x64. The
global structure (flat regions, straight and round edges, an orientation-carrying
background) is what a tiny VQGAN + transformer learns in minutes on CPU, and it
makes inpainting meaningful: a hole in a shape must be filled with that shape's colour.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from utils import UserError, ensure_writable_dir

SPLITS = ("train", "val", "test")
# Backgrounds are muted and shapes saturated, so every shape stands out from its background.
BACKGROUNDS = np.array([[40, 40, 60], [70, 50, 40], [30, 70, 60], [90, 90, 100],
                        [60, 30, 70], [20, 40, 90], [80, 80, 40], [50, 70, 30]], np.float32)
SHAPE_COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 90, 240], [250, 220, 40],
                          [240, 60, 220], [40, 220, 230], [250, 140, 20], [245, 245, 245]],
                         np.float32)


def _image(rng: np.random.Generator, resolution: int) -> np.ndarray:
    y, x = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5  # (H, W) pixel centres

    # background: two colours blended along a random direction, t in [0, 1]
    c0, c1 = BACKGROUNDS[rng.choice(len(BACKGROUNDS), 2, replace=False)]
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y) / resolution
    t = (t - t.min()) / (t.max() - t.min())
    image = c0 + t[..., None] * (c1 - c0)  # (H, W, 3)

    scale = resolution / 64
    for colour in SHAPE_COLOURS[rng.choice(len(SHAPE_COLOURS), rng.integers(1, 4), replace=False)]:
        r = rng.uniform(6, 14) * scale  # half the 12-28 px extent
        cx, cy = rng.uniform(r, resolution - r, 2)
        kind = rng.integers(3)
        if kind == 0:    # circle
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2
        elif kind == 1:  # square
            inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
        else:            # triangle, apex up: half-width grows from 0 at the apex to r at the base
            inside = (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - cy + r) / 2)
        image[inside] = colour
    return image.round().astype(np.uint8)


def make_synthetic_images(n: int, resolution: int = 64, seed: int = 0,
                          split: str = "train") -> np.ndarray:
    """uint8 (n, resolution, resolution, 3). Image i of a split is drawn from its own
    stream seeded by (seed, split, i), so splits are disjoint and growing n keeps the
    earlier images."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    s = SPLITS.index(split)
    out = np.empty((n, resolution, resolution, 3), np.uint8)
    for i in range(n):
        out[i] = _image(np.random.default_rng([seed, s, i]), resolution)
    return out


def write_synthetic_folder(out_dir: str | Path, n: int, resolution: int = 64, seed: int = 0,
                           split: str = "train") -> Path:
    """Write out_dir/split/image_{i:05d}.png and return that folder."""
    folder = ensure_writable_dir(Path(out_dir) / split)
    for i, image in enumerate(make_synthetic_images(n, resolution, seed, split)):
        Image.fromarray(image).save(folder / f"image_{i:05d}.png")
    return folder
