"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1].

Every schedule has gamma(0) = 1, gamma(1) = 0 and is non-increasing. The same
function sets the training mask ratio (r ~ U(0, 1)) and the decoding schedule (r = t/T).
"""
import math

import torch

from utils import UserError

_SCHEDULES = {
    "linear": lambda r: 1.0 - r,
    "cosine": lambda r: torch.cos(r * math.pi / 2),
    "square": lambda r: 1.0 - r ** 2,
    "cubic": lambda r: 1.0 - r ** 3,
    "sqrt": lambda r: 1.0 - torch.sqrt(r),
    "log": lambda r: 1.0 - torch.log2(1.0 + r),
    "exp": lambda r: 1.0 - torch.expm1(r) / (math.e - 1.0),
}
SCHEDULES = tuple(_SCHEDULES)


def gamma_func(mode: str = "cosine"):
    """Return gamma(r) for `mode`; r may be a float or a tensor. Unknown modes are an error."""
    if mode not in _SCHEDULES:
        raise UserError(f"unknown mask function '{mode}'; choose one of {', '.join(SCHEDULES)}")
    fn = _SCHEDULES[mode]

    def gamma(r):
        t = torch.as_tensor(r, dtype=torch.float64)
        out = fn(t.clamp(0.0, 1.0)).clamp(0.0, 1.0)
        out = torch.where(t >= 1.0, 0.0, out)  # exact 0 at the end (cos(pi/2) is 6e-17)
        return out if isinstance(r, torch.Tensor) else float(out)

    gamma.__name__ = f"gamma_{mode}"
    return gamma
