"""Training masks for the conditional decoder: the suite's generators, all-hole and hole-free.

A mix names a weight per kind: the generators of data/masks.py (`lab`, `box`, `outpaint`)
and two degenerate masks, `all_hole` (nothing known: the decoder must stay an ordinary
decoder) and `hole_free` (everything known: it must give the image back). Drawing a lab
mask takes milliseconds, too slow per training sample, so each generator fills a bank of
`bank_size` masks once (mask i of kind k from its own stream of (seed, k, i), as
`data.masks.mask_rng` does for the test sets), and every sample takes one bank mask under
one of the 8 flips and quarter turns of the square. The draws use torch's global RNG,
which the trainers' checkpoints carry, so a resumed run draws what an unbroken one would.
"""
from __future__ import annotations

import numpy as np
import torch

from data.masks import KNOWN, MASK_GENERATORS
from utils import UserError

DEGENERATE = ("all_hole", "hole_free")
KINDS = (*MASK_GENERATORS, *DEGENERATE)


def check_mix(weights: dict, where: str = "masks") -> dict[str, float]:
    """The mix as {kind: probability}, or a UserError naming the bad entry."""
    if not isinstance(weights, dict) or not weights:
        raise UserError(f"{where} must map mask kinds ({', '.join(KINDS)}) to weights")
    for kind, w in weights.items():
        if kind not in KINDS:
            raise UserError(f"{where}: unknown mask kind '{kind}'; choose from {', '.join(KINDS)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise UserError(f"{where}.{kind} = {w!r} must be a number >= 0")
    total = sum(weights.values())
    if total <= 0:
        raise UserError(f"{where}: the weights sum to 0; give at least one kind a weight > 0")
    return {k: w / total for k, w in weights.items()}


def mask_bank(kind: str, n: int, resolution: int, seed: int) -> torch.Tensor:
    """n masks of generator `kind` as bool (n, R, R), True = known."""
    k = list(MASK_GENERATORS).index(kind)
    generate = MASK_GENERATORS[kind]
    masks = [generate(np.random.default_rng([seed, 1 + k, i]), resolution) == KNOWN for i in range(n)]
    return torch.from_numpy(np.stack(masks))


class MaskMix:
    """`sample(n)` -> known (n, 1, R, R) float in {0, 1}, one mask per image, its kind drawn
    from the mix."""

    def __init__(self, weights: dict, resolution: int, bank_size: int, seed: int = 0):
        self.probs = check_mix(weights)
        self.kinds = [k for k, p in self.probs.items() if p > 0]
        self.weights = torch.tensor([self.probs[k] for k in self.kinds], dtype=torch.float64)
        self.resolution = resolution
        self.banks = {k: mask_bank(k, bank_size, resolution, seed)
                      for k in self.kinds if k in MASK_GENERATORS}

    def sample(self, n: int) -> torch.Tensor:
        picks = torch.multinomial(self.weights, n, replacement=True).tolist()
        out = []
        for kind in (self.kinds[p] for p in picks):
            r = self.resolution
            if kind == "all_hole":
                mask = torch.zeros(r, r, dtype=torch.bool)
            elif kind == "hole_free":
                mask = torch.ones(r, r, dtype=torch.bool)
            else:
                bank = self.banks[kind]
                i, g = torch.randint(len(bank), ()).item(), torch.randint(8, ()).item()
                mask = torch.rot90(bank[i], g % 4)  # g: one of the square's 8 symmetries
                mask = mask.flip(-1) if g >= 4 else mask
            out.append(mask)
        return torch.stack(out)[:, None].float()  # (n, 1, R, R)
