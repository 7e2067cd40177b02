"""Stage 1: the VQGAN tokenizers (encoder, codebook, decoder) and their training losses.

`VQGAN` has the lab's module tree (its pretrained VQGAN.pt loads with strict=True);
`CompactVQGAN` is the CPU recipe's own architecture. A config picks one with
`architecture:` (absent means the lab's).
"""
from utils import UserError
from .codebook import Codebook, codebook_usage
from .compact import CompactVQGAN
from .factorized_codebook import FactorizedCodebook
from .vqgan import VQGAN

ARCHITECTURES = {"vqgan": VQGAN, "compact": CompactVQGAN}


def build_vqgan(cfg: dict, where: str = "VQGAN config"):
    """The tokenizer a config describes: `VQGAN` or `CompactVQGAN`."""
    arch = cfg.get("architecture", "vqgan")
    if arch not in ARCHITECTURES:
        raise UserError(f"{where}: unknown architecture '{arch}'; choose one of "
                        f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch].from_config(cfg, where)


__all__ = ["VQGAN", "CompactVQGAN", "Codebook", "FactorizedCodebook", "build_vqgan",
           "codebook_usage"]
