"""Where training images come from: a folder on disk, or the built-in generated set."""
from __future__ import annotations

import torch

from .images import ImageFolderDataset
from .synthetic import make_synthetic_images

SYNTHETIC_SIZES = {"train": 2000, "val": 200, "test": 100}


def image_tensor(folder, resolution: int, split: str = "train", partial: float | None = None,
                 on_bad: str = "error", seed: int = 0) -> torch.Tensor:
    """uint8 (N, 3, R, R) images of `folder`, or of the generated dataset when folder is None."""
    if folder is None:
        n = SYNTHETIC_SIZES[split]
        n = max(2, int(n * partial)) if partial else n
        images = make_synthetic_images(n, resolution, seed=seed, split=split)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, R, R)
    # normalisation is applied per batch by the trainers, so mean/std are unused here
    return ImageFolderDataset(folder, resolution, (0.0,) * 3, (1.0,) * 3, on_bad=on_bad,
                              partial=partial).uint8
