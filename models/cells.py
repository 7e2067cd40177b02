"""A pixel mask seen on a coarser grid: how much of each cell is known.

One definition for every consumer, so that "re-predicted" (MaskGIT decoding: a token is
re-predicted unless all of its cell is known) and "partly known" (the conditional decoder's
token noise: some of the cell known, not all) mean the same cells.
"""
import torch
import torch.nn.functional as F


def known_fraction(known: torch.Tensor, side: int) -> torch.Tensor:
    """known (B, 1, R, R), 1 = known -> (B, 1, side, side) float32 in [0, 1]: the mean of each
    (R/side)x(R/side) cell. `side` must divide R."""
    R = known.shape[-1]
    if R % side:
        raise ValueError(f"a {side}x{side} grid does not tile a {R}x{R} mask")
    known = known.float()
    return known if side == R else F.avg_pool2d(known, R // side)
