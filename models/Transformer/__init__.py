"""Stage 2: the bidirectional transformer that predicts masked token ids."""
from .attention import MultiHeadAttention
from .transformer import BidirectionalTransformer

__all__ = ["BidirectionalTransformer", "MultiHeadAttention"]
