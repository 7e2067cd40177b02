"""Bidirectional transformer over VQGAN token ids, with the lab's parameter names.

tok_emb -> +pos_emb -> LN -> dropout -> post-LN blocks -> Token_Prediction
-> logits = h @ tok_emb.weight^T + bias. Id K (= num_codebook_vectors) is [MASK].
"""
import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from .packed import Linear


class Encoder(nn.Module):
    """Post-LN transformer block: x = LN1(x + Attn(x)); x = LN2(x + MLP(x))."""

    def __init__(self, dim: int, hidden_dim: int, num_heads: int, attn_drop: float,
                 dropout: float, fused_attention: bool):
        super().__init__()
        self.Attention = MultiHeadAttention(dim, num_heads, attn_drop, fused_attention)
        self.LayerNorm1 = nn.LayerNorm(dim, eps=1e-12)
        self.LayerNorm2 = nn.LayerNorm(dim, eps=1e-12)
        self.MLP = nn.Sequential(Linear(dim, hidden_dim), nn.GELU(),
                                 Linear(hidden_dim, dim), nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, rows=None):  # (B, N, C) -> (B, N, C), or (M, C) at `rows` (B, N) bool
        x = self.LayerNorm1(x + self.dropout(self.Attention(x)))  # every row: keys and values
        if rows is not None:
            x = x[rows]  # (M, C): from here on each token is on its own
        return self.LayerNorm2(x + self.MLP(x))


class BidirectionalTransformer(nn.Module):
    def __init__(self, num_image_tokens: int, num_codebook_vectors: int, dim: int, n_layers: int,
                 hidden_dim: int, num_heads: int = 16, attn_drop: float = 0.1,
                 dropout: float = 0.1, fused_attention: bool = False):
        super().__init__()
        self.num_image_tokens = num_image_tokens
        self.mask_token_id = num_codebook_vectors
        vocab = num_codebook_vectors + 1
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(num_image_tokens, dim), 0.0, 0.02))
        self.blocks = nn.Sequential(*[Encoder(dim, hidden_dim, num_heads, attn_drop, dropout,
                                              fused_attention) for _ in range(n_layers)])
        self.Token_Prediction = nn.Sequential(Linear(dim, dim), nn.GELU(),
                                              nn.LayerNorm(dim, eps=1e-12))
        self.LN = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(num_image_tokens, vocab))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N) in [0, K] (K = [MASK]) -> logits (B, N, K + 1); `logits_at` computes
        them at chosen positions only (training's loss and decoding read the masked ones)."""
        return self.logits_at(tokens)

    def logits_at(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, N) -> logits (M, K + 1) at `rows` (B, N) bool, in row-major order, or
        (B, N, K + 1) at every position without `rows`. The last block's MLP and the
        prediction head skip the other rows (attention still reads every token); the values
        at `rows` are those of the full forward."""
        n = tokens.shape[1]
        x = self.drop(self.LN(self.tok_emb(tokens) + self.pos_emb[:n]))  # (B, N, C)
        x = self.blocks[-1](self.blocks[:-1](x), rows)  # (B, N, C), or (M, C) at `rows`
        # the bias rows by position: gathering them from a (B, N, K+1) expansion would cost
        # its backward a scatter into that whole tensor
        bias = self.bias[:n] if rows is None else self.bias.index_select(0, rows.nonzero()[:, 1])
        return self.Token_Prediction(x) @ self.tok_emb.weight.t() + bias  # (B, N, K+1) / (M, K+1)
