"""VQGAN decoder: latent (B, latent_dim, r, r) -> image (B, 3, R, R).

`fusion_levels` names where a mask-conditioned branch (conditional.py) may add its features:
(index in `model` after which to fuse, channels there, image side / feature side). It is a
plain attribute, so the module tree and the lab's state_dict keys are unchanged.
"""
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
        # after the middle blocks, after every upsampling, and before the output head (the
        # places Asymmetric VQGAN's MaskConditionDecoder blends its features in)
        self.fusion_levels = [(len(layers) - 1, in_ch, img_resolution // resolution)]
        for i, out_ch in enumerate(channels):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_ch, out_ch, groups))
                in_ch = out_ch
                if resolution in attn_resolutions:
                    layers.append(NonLocalBlock(in_ch, groups))
            if i in ups:
                layers.append(UpSampleBlock(in_ch))
                resolution *= 2
                self.fusion_levels.append((len(layers) - 1, in_ch, img_resolution // resolution))
        assert resolution == img_resolution, (resolution, img_resolution)
        self.fusion_levels.append((len(layers) - 1, in_ch, 1))
        # The lab's decoder has no Swish between the last GroupNorm and the output conv.
        layers += [GroupNorm(in_ch, groups), nn.Conv2d(in_ch, image_channels, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, z):
        return self.model(z)
