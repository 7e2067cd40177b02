"""Stage 1: the VQGAN tokenizer (encoder, codebook, decoder) and its training losses."""
from .codebook import Codebook, codebook_usage
from .vqgan import VQGAN

__all__ = ["VQGAN", "Codebook", "codebook_usage"]
