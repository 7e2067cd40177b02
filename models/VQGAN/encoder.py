"""VQGAN encoder: image (B, 3, R, R) -> latent (B, latent_dim, r, r)."""
import math

import torch.nn as nn

from .blocks import DownSampleBlock, GroupNorm, NonLocalBlock, ResidualBlock, Swish, resample_stages


class Encoder(nn.Module):
    def __init__(self, image_channels: int, channels: list[int], latent_dim: int,
                 img_resolution: int, latent_resolution: int, num_res_blocks: int = 2,
                 attn_resolutions: tuple[int, ...] = (16,), groups: int = 32):
        super().__init__()
        num_stages = len(channels) - 1
        downs = resample_stages(num_stages, int(math.log2(img_resolution // latent_resolution)),
                                from_end=True)
        layers = [nn.Conv2d(image_channels, channels[0], 3, 1, 1)]
        resolution = img_resolution
        for i in range(num_stages):
            in_ch, out_ch = channels[i], channels[i + 1]
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_ch, out_ch, groups))
                in_ch = out_ch
                if resolution in attn_resolutions:
                    layers.append(NonLocalBlock(in_ch, groups))
            if i in downs:
                layers.append(DownSampleBlock(out_ch))
                resolution //= 2
        assert resolution == latent_resolution, (resolution, latent_resolution)
        top = channels[-1]
        layers += [ResidualBlock(top, top, groups), NonLocalBlock(top, groups),
                   ResidualBlock(top, top, groups), GroupNorm(top, groups), Swish(),
                   nn.Conv2d(top, latent_dim, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)
