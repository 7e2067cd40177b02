"""PSNR over a region of the image: the known pixels, the holes, or all of them."""
from __future__ import annotations

import torch


def psnr(pred01: torch.Tensor, target01: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB, 10 log10(1 / MSE), of `pred01` against `target01` (B, C, H, W)
    in [0, 1], the MSE taken over the pixels where `region` (B, 1, H, W) is 1 (every pixel
    when None). An image whose region is empty gets NaN (average with torch.nanmean); an
    exact match is capped at 100 dB (MSE 1e-10)."""
    sq = (pred01.float() - target01.float()) ** 2  # (B, C, H, W)
    if region is None:
        mse = sq.mean(dim=(1, 2, 3))
    else:
        weight = region.to(sq.dtype).expand_as(sq)
        mse = (sq * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))  # 0 / 0 = NaN
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
