"""Token cache: the frozen VQGAN's indices for a set of images, computed once.

Stage 2 never changes the VQGAN, so re-encoding every image every epoch is waste.
The cache key is the VQGAN checkpoint's content hash plus a hash of the image data
and normalisation, so a new checkpoint or a changed dataset never reuses stale tokens.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tqdm import tqdm

from runtime.checkpoints import load_checkpoint, save_checkpoint
from .images import normalize


def file_digest(path: str | Path | None) -> str:
    """sha256 of a file's bytes ('untrained' when there is no file)."""
    if path is None:
        return "untrained"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_digest(images: torch.Tensor, mean, std, flip: bool) -> str:
    h = hashlib.sha256(images.contiguous().numpy().tobytes())
    h.update(repr((list(mean), list(std), tuple(images.shape), flip)).encode())
    return h.hexdigest()


@torch.no_grad()
def tokenize(vqgan, images: torch.Tensor, mean, std, device, batch_size: int = 128,
             desc: str = "tokenizing") -> torch.Tensor:
    """uint8 images (N, 3, R, R) -> token ids (N, r*r) int64 in [0, K)."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=len(images) <= batch_size):
        x = normalize(images[i:i + batch_size].to(device).float() / 255, mean, std)
        out.append(vqgan.encode(x)[1].cpu())
    return torch.cat(out)


def cached_tokens(vqgan, vq_ckpt: str | Path | None, images: torch.Tensor, mean, std, device,
                  cache_dir: str | Path, flip: bool = False) -> torch.Tensor:
    """Token ids (V, N, r*r) for the images (V = 2 with horizontal flips, else 1), from the
    cache when the key matches, else computed and written atomically."""
    key = hashlib.sha256((file_digest(vq_ckpt) + data_digest(images, mean, std, flip)).encode())
    path = Path(cache_dir) / f"tokens_{key.hexdigest()[:20]}.pt"
    if vq_ckpt is not None and path.exists():  # an untrained VQGAN's tokens are never cached
        return load_checkpoint(path)["tokens"].long()
    views = [images, images.flip(-1)] if flip else [images]
    tokens = torch.stack([tokenize(vqgan, v, mean, std, device) for v in views])
    if vq_ckpt is not None:
        save_checkpoint({"tokens": tokens.to(torch.int32)}, path)
    return tokens
