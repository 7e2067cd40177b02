"""Data: image files -> normalised tensors, inpainting masks, and a generated dataset."""
from .images import (IMAGE_EXTENSIONS, ImageFolderDataset, denormalize, list_images, load_rgb,
                     normalization, normalize, to_uint8)
from .masks import (HOLE_RGB, MASK_GENERATORS, MaskedImageDataset, apply_mask, box_mask,
                    get_mask_generator, lab_mask, make_masked_set, outpaint_mask)
from .synthetic import make_synthetic_images, write_synthetic_folder

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "denormalize", "list_images", "load_rgb",
           "normalization", "normalize", "to_uint8",
           "HOLE_RGB", "MASK_GENERATORS", "MaskedImageDataset", "apply_mask", "box_mask",
           "get_mask_generator", "lab_mask", "make_masked_set", "outpaint_mask",
           "make_synthetic_images", "write_synthetic_folder"]
