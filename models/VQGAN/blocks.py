"""Building blocks of the VQGAN encoder and decoder.

Module and attribute names (`block`, `gn`, `channel_up`, `q/k/v/proj_out`, `conv`)
are fixed by the lab's pretrained state_dict, so they must not be renamed.
"""
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm(nn.Module):
    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.gn = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)

    def forward(self, x):
        return self.gn(x)


class Swish(nn.Module):
    def forward(self, x):
        return F.silu(x)


class ResidualBlock(nn.Module):
    """GN -> Swish -> Conv3x3 -> GN -> Swish -> Conv3x3, plus a 1x1 skip when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.block = nn.Sequential(
            GroupNorm(in_channels, groups), Swish(),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            GroupNorm(out_channels, groups), Swish(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        if in_channels != out_channels:
            self.channel_up = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, H, W)
        skip = self.channel_up(x) if hasattr(self, "channel_up") else x
        return skip + self.block(x)


class DownSampleBlock(nn.Module):
    """Stride-2 3x3 conv; the asymmetric (0,1,0,1) pad halves even sizes exactly."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class UpSampleBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class NonLocalBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions, with a residual."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = GroupNorm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        h_ = self.norm(x)
        q = self.q(h_).flatten(2).transpose(1, 2)  # (B, HW, C)
        k = self.k(h_).flatten(2).transpose(1, 2)  # (B, HW, C)
        v = self.v(h_).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C), softmax(qk^T/sqrt(C))v
        out = out.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


def resample_stages(num_stages: int, num_resamples: int, from_end: bool) -> set[int]:
    """Which stages are followed by a down/up-sampling block.

    The lab's 64 -> 16 VQGAN resamples after every second stage counted from the
    bottleneck: encoder stages {4, 2} of 0..4, decoder stages {0, 2}. Other
    depths and resolutions follow the same rule.
    """
    if num_resamples > (num_stages + 1) // 2:
        raise ValueError(f"{num_stages} stages cannot hold {num_resamples} resampling steps")
    picked = range(0, 2 * num_resamples, 2)
    return {num_stages - 1 - i for i in picked} if from_end else set(picked)
