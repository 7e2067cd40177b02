"""VQGAN: encoder -> quant_conv -> codebook -> post_quant_conv -> decoder.

Built from a config with the lab's keys; `VQGAN(**lab_config).state_dict()` has
exactly the keys and shapes of the lab's pretrained VQGAN.pt. `conditional: true` adds the
mask-conditioned branch (conditional.py) under its own `cond.*` keys, after those.
"""
import torch
import torch.nn as nn

from utils import UserError, require_keys
from .codebook import Codebook
from .conditional import BRANCH_OPTIONS, MaskBranch
from .decoder import Decoder
from .encoder import Encoder
from .tokenizer import Tokenizer

ARCH_KEYS = ["image_channels", "enc_channels", "dec_channels", "latent_dim", "img_resolution",
             "latent_resolution", "num_codebook_vectors", "beta"]
# Keys with the lab's values as defaults, so the lab's VQGAN.yml works unchanged.
ARCH_DEFAULTS = {"enc_num_res_blocks": 2, "dec_num_res_blocks": 3, "attn_resolutions": [16],
                 "norm_groups": 32, "conditional": False, **BRANCH_OPTIONS}


class VQGAN(Tokenizer):
    def __init__(self, image_channels: int, enc_channels: list[int], dec_channels: list[int],
                 latent_dim: int, img_resolution: int, latent_resolution: int,
                 num_codebook_vectors: int, beta: float, enc_num_res_blocks: int = 2,
                 dec_num_res_blocks: int = 3, attn_resolutions=(16,), norm_groups: int = 32,
                 conditional: bool = False, fuse_pixels: bool = False, hole_guide: bool = False,
                 hole_residual: bool = False):
        super().__init__()
        self.latent_resolution = latent_resolution
        self.num_codebook_vectors = num_codebook_vectors
        attn = tuple(attn_resolutions)
        self.encoder = Encoder(image_channels, enc_channels, latent_dim, img_resolution,
                               latent_resolution, enc_num_res_blocks, attn, norm_groups)
        self.decoder = Decoder(image_channels, dec_channels, latent_dim, img_resolution,
                               latent_resolution, dec_num_res_blocks, attn, norm_groups)
        self.codebook = Codebook(num_codebook_vectors, latent_dim, beta)
        self.quant_conv = nn.Conv2d(latent_dim, latent_dim, 1)
        self.post_quant_conv = nn.Conv2d(latent_dim, latent_dim, 1)
        self.cond = MaskBranch(image_channels, self.decoder.fusion_levels, fuse_pixels,
                                hole_guide, hole_residual) if conditional else None

    @classmethod
    def from_config(cls, cfg: dict, where: str = "VQGAN config") -> "VQGAN":
        require_keys(cfg, ARCH_KEYS, where)
        kwargs = {k: cfg[k] for k in ARCH_KEYS}
        kwargs.update({k: cfg.get(k, v) for k, v in ARCH_DEFAULTS.items()})
        try:
            return cls(**kwargs)
        except (AssertionError, ValueError) as e:
            raise UserError(f"{where} describes an impossible VQGAN ({e}); "
                            f"check the channel lists and resolutions") from None

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight the adaptive GAN weight balances its gradient at."""
        return self.decoder.model[-1].weight

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, R, R) -> the pre-quantisation vectors (B*r*r, D), for code restarts."""
        return self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2)

    def encode(self, x: torch.Tensor):
        """x (B, 3, R, R) normalised -> z_q (B, D, r, r), indices (B, r*r) in [0, K), q_loss."""
        return self.codebook(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor, image: torch.Tensor | None = None,
               known: torch.Tensor | None = None) -> torch.Tensor:
        """z_q (B, D, r, r) -> image (B, 3, R, R) in the normalised space; with `known`
        (B, 1, R, R), through the conditional branch on `image`'s known pixels."""
        return self.run_decoder(self.post_quant_conv(z_q), image, known)
