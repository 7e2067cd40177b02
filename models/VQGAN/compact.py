"""CompactVQGAN: a VQGAN that a CPU trains, with the VQGAN's contract (64x64 -> 16x16 tokens).

Little work runs at full resolution: the encoder starts from a lossless pixel-unshuffle
(space-to-depth) of the image and the decoder ends with the inverse pixel-shuffle, so no
convolution runs at 64x64. Most of the compute sits on the token grid, where MaskBit's
VQGAN+ study found width to be the largest single gain. Its codes are the factorised,
l2-normalised ones of `FactorizedCodebook`. It is its own class with its own module tree:
nothing here changes what the lab's `VQGAN.pt` loads into (models/VQGAN/vqgan.py).
`conditional: true` adds the mask-conditioned branch (conditional.py) under `cond.*`.

Shapes for the cat-face recipe (R = 64, r = 16, unshuffle 2 then 2):
    image (B, 3, 64, 64) -> unshuffle -> (B, 12, 32, 32) -> stem -> (B, C1, 32, 32)
    -> res blocks -> unshuffle -> (B, 4 C1, 16, 16) -> 1x1 -> (B, C2, 16, 16) -> res blocks
    -> 1x1 -> (B, d, 16, 16) -> codebook -> z_q (B, d, 16, 16)
    -> 3x3 -> (B, C2, 16, 16) -> res blocks -> 1x1 -> (B, 4 C1, 16, 16) -> shuffle
    -> (B, C1, 32, 32) -> res blocks -> 3x3 -> (B, 12, 32, 32) -> shuffle -> (B, 3, 64, 64)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from utils import UserError, require_keys
from .conditional import BRANCH_OPTIONS, MaskBranch
from .factorized_codebook import FactorizedCodebook
from .tokenizer import Tokenizer

ARCH_KEYS = ["image_channels", "img_resolution", "latent_resolution", "num_codebook_vectors",
             "code_dim", "channels", "enc_res_blocks", "dec_res_blocks", "beta", "ema_decay",
             "norm_groups"]
OPTIONAL_KEYS = {"l2_normalize": True, "conditional": False, **BRANCH_OPTIONS}


class ResBlock(nn.Module):
    """x + Conv3x3(SiLU(Norm(Conv3x3(SiLU(Norm(x)))))); `groups` 0 drops the norms, which
    are memory-bound on a CPU. The last conv starts at zero, so every block starts as the
    identity and a deep stack without norms still trains."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        norm = (lambda: nn.GroupNorm(groups, channels, eps=1e-6)) if groups else nn.Identity
        self.block = nn.Sequential(norm(), nn.SiLU(), nn.Conv2d(channels, channels, 3, 1, 1),
                                   norm(), nn.SiLU(), nn.Conv2d(channels, channels, 3, 1, 1))
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        return x + self.block(x)


def stack(channels: int, count: int, groups: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels, groups) for _ in range(count)])


class CompactEncoder(nn.Module):
    """(B, 3, R, R) -> (B, d, r, r): per halving of the resolution, an unshuffle and a 1x1
    conv; `res_blocks[i]` blocks at width `channels[i]` after the i-th halving."""

    def __init__(self, image_channels: int, channels: list[int], res_blocks: list[int],
                 code_dim: int, groups: int):
        super().__init__()
        layers, prev = [], image_channels
        for i, (width, count) in enumerate(zip(channels, res_blocks)):
            k = 3 if i == 0 else 1  # the stem sees pixels; later halvings only regroup features
            # (B, prev, H, W) -> (B, 4 prev, H/2, W/2) -> (B, width, H/2, W/2)
            layers += [nn.PixelUnshuffle(2), nn.Conv2d(4 * prev, width, k, 1, k // 2),
                       stack(width, count, groups)]
            prev = width
        layers += [nn.SiLU(), nn.Conv2d(prev, code_dim, 1)]  # (B, d, r, r)
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class CompactDecoder(nn.Module):
    """(B, d, r, r) -> (B, 3, R, R): the encoder's stages in reverse, each ending in a 1x1 conv
    to 4x the next width and a pixel shuffle; the last shuffle gives the image."""

    def __init__(self, image_channels: int, channels: list[int], res_blocks: list[int],
                 code_dim: int, groups: int):
        super().__init__()
        widths = channels[::-1]  # deepest first
        layers = [nn.Conv2d(code_dim, widths[0], 3, 1, 1)]  # (B, C_deep, r, r)
        # where a mask-conditioned branch (conditional.py) may fuse: (index in `model` after
        # which, channels, image side / feature side): at the start of every resolution and
        # before the head; a plain attribute, outside the state_dict
        self.fusion_levels = [(0, widths[0], 2 ** len(widths))]
        for i, (width, count) in enumerate(zip(widths, res_blocks[::-1])):
            last = i + 1 == len(widths)
            out, k = (image_channels, 3) if last else (widths[i + 1], 1)  # 3x3 where pixels come out
            # (B, width, H, W) -> (B, 4 out, H, W) -> (B, out, 2H, 2W)
            layers += [stack(width, count, groups), nn.SiLU(), nn.Conv2d(width, 4 * out, k, 1, k // 2),
                       nn.PixelShuffle(2)]
            if not last:
                self.fusion_levels.append((len(layers) - 1, out, 2 ** (len(widths) - 1 - i)))
        self.fusion_levels.append((len(layers) - 4, widths[-1], 2))  # after the last stack
        self.model = nn.Sequential(*layers)

    def forward(self, z):
        return self.model(z)


class CompactVQGAN(Tokenizer):
    """encoder -> FactorizedCodebook -> decoder, with VQGAN's `encode` / `decode` /
    `decode_indices` / `forward` contract; images normalised, indices row-major in [0, K)."""

    def __init__(self, image_channels: int, img_resolution: int, latent_resolution: int,
                 num_codebook_vectors: int, code_dim: int, channels: list[int],
                 enc_res_blocks: list[int], dec_res_blocks: list[int], beta: float = 0.25,
                 ema_decay: float = 0.0, norm_groups: int = 0, l2_normalize: bool = True,
                 conditional: bool = False, fuse_pixels: bool = False, hole_guide: bool = False,
                 hole_residual: bool = False):
        super().__init__()
        halvings = math.log2(img_resolution / latent_resolution)
        if halvings != len(channels) or not halvings.is_integer():
            raise ValueError(f"{img_resolution} -> {latent_resolution} needs one channel width per "
                             f"halving, got {len(channels)}")
        if not len(enc_res_blocks) == len(dec_res_blocks) == len(channels):
            raise ValueError("enc_res_blocks and dec_res_blocks need one count per channel width")
        self.latent_resolution = latent_resolution
        self.num_codebook_vectors = num_codebook_vectors
        self.encoder = CompactEncoder(image_channels, channels, enc_res_blocks, code_dim, norm_groups)
        self.decoder = CompactDecoder(image_channels, channels, dec_res_blocks, code_dim, norm_groups)
        self.codebook = FactorizedCodebook(num_codebook_vectors, code_dim, beta, ema_decay,
                                           l2_normalize=l2_normalize)
        self.cond = MaskBranch(image_channels, self.decoder.fusion_levels, fuse_pixels,
                                hole_guide, hole_residual) if conditional else None

    @classmethod
    def from_config(cls, cfg: dict, where: str = "VQGAN config") -> "CompactVQGAN":
        require_keys(cfg, ARCH_KEYS, where)
        try:
            return cls(**{k: cfg[k] for k in ARCH_KEYS},
                       **{k: cfg.get(k, v) for k, v in OPTIONAL_KEYS.items()})
        except (AssertionError, ValueError) as e:
            raise UserError(f"{where} describes an impossible CompactVQGAN ({e}); "
                            f"check channels, res blocks and resolutions") from None

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight the adaptive GAN weight balances its gradient at."""
        return self.decoder.model[-2].weight

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, R, R) -> the pre-quantisation vectors (B*r*r, d), for code restarts."""
        return self.encoder(x).permute(0, 2, 3, 1).flatten(0, 2)

    def encode(self, x: torch.Tensor):
        """x (B, 3, R, R) normalised -> z_q (B, d, r, r), indices (B, r*r) in [0, K), q_loss."""
        return self.codebook(self.encoder(x))

    def decode(self, z_q: torch.Tensor, image: torch.Tensor | None = None,
               known: torch.Tensor | None = None) -> torch.Tensor:
        """z_q (B, d, r, r) -> image (B, 3, R, R) in the normalised space; with `known`
        (B, 1, R, R), through the conditional branch on `image`'s known pixels."""
        return self.run_decoder(z_q, image, known)
