"""VQGAN decoder: latent (B, latent_dim, r, r) -> image (B, 3, R, R)."""
import math

import torch.nn as nn

from .blocks import GroupNorm, NonLocalBlock, ResidualBlock, UpSampleBlock, resample_stages


class Decoder(nn.Module):
    def __init__(self, image_channels: int, channels: list[int], latent_dim: int,
                 img_resolution: int, latent_resolution: int, num_res_blocks: int = 3,
                 attn_resolutions: tuple[int, ...] = (16,), groups: int = 32):
        super().__init__()
        channels = list(reversed(channels))  # the config lists widths from the image side
        ups = resample_stages(len(channels), int(math.log2(img_resolution // latent_resolution)),
                              from_end=False)
        in_ch = channels[0]
        layers = [nn.Conv2d(latent_dim, in_ch, 3, 1, 1),
                  ResidualBlock(in_ch, in_ch, groups), NonLocalBlock(in_ch, groups),
                  ResidualBlock(in_ch, in_ch, groups)]
        resolution = latent_resolution
        for i, out_ch in enumerate(channels):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_ch, out_ch, groups))
                in_ch = out_ch
                if resolution in attn_resolutions:
                    layers.append(NonLocalBlock(in_ch, groups))
            if i in ups:
                layers.append(UpSampleBlock(in_ch))
                resolution *= 2
        assert resolution == img_resolution, (resolution, img_resolution)
        # The lab's decoder has no Swish between the last GroupNorm and the output conv.
        layers += [GroupNorm(in_ch, groups), nn.Conv2d(in_ch, image_channels, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, z):
        return self.model(z)
