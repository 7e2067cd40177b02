"""PatchGAN discriminator (pix2pix style): one real/fake logit per image patch.

`forward(x, features=True)` also returns the activation after every LeakyReLU, for the
feature-matching loss (losses.feature_matching_loss): a perceptual signal from our own
discriminator, trained on our own images, never from the FID network.
"""
import torch
import torch.nn as nn


class Discriminator(nn.Module):
    def __init__(self, image_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(image_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, features: bool = False):
        """x (B, 3, R, R) -> patch logits (B, 1, R', R'); with `features`, (logits, the
        list of activations after each LeakyReLU, coarser as it goes)."""
        if not features:
            return self.model(x)
        feats = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return x, feats
