"""Hand-written multi-head self-attention, with an optional fused kernel path."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .packed import Linear


SCORES_PER_CHUNK = 1 << 20  # 4 MB of fp32 scores: 16 heads at N = 256


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head)) V over all tokens (bidirectional, no causal mask).

    `fused=True` computes the same function with F.scaled_dot_product_attention;
    the explicit path is the default because the lab asks for it. On a CPU it takes the
    (batch x head) slices a chunk at a time, so that a chunk's scores stay in the caches: the
    same values as all at once, and at the lab's shapes in bf16 1.15x the transformer
    forward on an AVX512-BF16 CPU (16 images' scores are 16 x 16 x 256 x 256).
    """

    def __init__(self, dim: int = 768, num_heads: int = 16, attn_drop: float = 0.1,
                 fused: bool = False):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.fused = fused
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def _attend(self, q, k, v, drop: float) -> torch.Tensor:  # (h, N, hd) -> (h, N, hd)
        # scale q, not the scores: (N, hd) is N/hd times smaller than (N, N)
        att = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # (h, N, N)
        att = F.dropout(att.softmax(dim=-1), p=drop, training=self.training)
        return att @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hd)
        drop = self.attn_drop if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            # GPUs keep one pass (not measured there): each chunk costs kernel launches
            heads = max(1, SCORES_PER_CHUNK // (n * n)) if x.is_cpu else b * self.num_heads
            chunks = zip(*(t.flatten(0, 1).split(heads) for t in (q, k, v)))  # (h, N, hd) each
            out = torch.cat([self._attend(*qkv, drop) for qkv in chunks]).unflatten(
                0, (b, self.num_heads))  # (B, nh, N, hd)
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, N, C): heads merged
        return self.proj(out)


def set_fused(model: nn.Module, fused: bool) -> None:
    """Switch every MultiHeadAttention in `model` to the fused kernel or the hand-written
    path. Both compute the same function with the same weights: a run-time speed choice."""
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.fused = fused


def attention_dropout(model: nn.Module) -> float:
    """The largest attention-dropout probability in `model` (0 without attention layers):
    what decides whether the fused kernel runs its unfused math path in training."""
    return max((m.attn_drop for m in model.modules() if isinstance(m, MultiHeadAttention)),
               default=0.0)
