"""Data: image files -> normalised tensors, inpainting masks, and a generated dataset."""
from .images import (IMAGE_EXTENSIONS, ImageFolderDataset, denormalize, list_images, load_rgb,
                     normalization, normalize, to_uint8)
from .synthetic import make_synthetic_images, write_synthetic_folder

_MASKS = {"HOLE_RGB", "MASK_GENERATORS", "MaskedImageDataset", "apply_mask", "box_mask",
          "get_mask_generator", "lab_mask", "make_masked_set", "outpaint_mask"}


def __getattr__(name: str):
    # masks.py is imported on first use, not here: `python -m data.masks` (the mask CLI) then
    # runs it once, without runpy's warning about a module imported before it is executed
    if name in _MASKS:
        from . import masks
        return getattr(masks, name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "denormalize", "list_images", "load_rgb",
           "normalization", "normalize", "to_uint8",
           "HOLE_RGB", "MASK_GENERATORS", "MaskedImageDataset", "apply_mask", "box_mask",
           "get_mask_generator", "lab_mask", "make_masked_set", "outpaint_mask",
           "make_synthetic_images", "write_synthetic_folder"]
