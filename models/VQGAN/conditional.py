"""Mask-conditioned decoding: the decoder keeps the known pixels itself (issue 16).

A light convolutional branch encodes the masked image and its mask into features at each
of the decoder's resolutions (Zhu et al. 2023, Asymmetric VQGAN; Liu et al. 2022, PUT's
P-VQVAE). At each place the decoder lists in `fusion_levels`, its features h take

    h <- h + m * W [h ; t]

where t is the branch's feature map at that resolution, m (B, 1, H, W) the fraction of
known pixels under each feature cell, and W a 1x1 convolution that starts at zero. The
papers' masked blend h <- (1 - m) h + m t is the case W = [-I, P] (P a projection of t);
W = 0 is the plain decoder, so at initialisation the output is the plain decoder's bit
for bit, and wherever m = 0 (every hole cell; everything under an all-hole mask) it stays
so for any W: an all-hole mask gives an ordinary decoder whatever the masked image holds.

The branch lives under its own keys (`cond.*`, next to the tokenizer's encoder, codebook
and decoder), so the plain module tree, the lab's 315-tensor VQGAN.pt and every plain
checkpoint are unchanged; `load_tokenizer_weights` loads a plain checkpoint into a
conditional model and names the new keys. The tokens depend on the encoder side only
(`TOKEN_SIDE`), which conditional training freezes.

Shapes for the compact cat-face recipe (R = 64, decoder widths 128 @ 16x16, 64 @ 32x32):
    masked image (B, 3, 64, 64), known (B, 1, 64, 64) -> cat (B, 4, 64, 64)
    -> unshuffle 2 -> (B, 16, 32, 32) -> 3x3 -> t_2 (B, 64, 32, 32)
    -> SiLU, unshuffle 2 -> (B, 256, 16, 16) -> 1x1 -> t_4 (B, 128, 16, 16)
    decoder: conv_in -> h (B, 128, 16, 16) + m_4 W_0 [h ; t_4] -> res blocks -> shuffle
             -> h (B, 64, 32, 32) + m_2 W_1 [h ; t_2] -> res blocks
             -> h (B, 64, 32, 32) + m_2 W_2 [h ; t_2] -> head -> (B, 3, 64, 64)
For the lab's decoder (512 @ 16, 512 @ 32, 256 and 128 @ 64) the branch starts with a 3x3
conv at 64x64 (factor 1, no unshuffle) and fuses after the middle blocks, after each
upsampling and before the output head.

With `fuse_pixels`, one more place is the decoder's output itself, and t the masked image:
    out (B, 3, R, R) + known * W_p [out ; image * known] (B, 6, R, R) -> (B, 3, R, R)
W_p = [-I, I] copies the known pixels, so the decoder can keep them exactly and spend all
of its width on the holes (their edge included: it is trained to meet the copied pixels);
what it learns is measured in the README. W_p is zero at init like every fusion.

With `hole_guide`, the branch reads the masked image with its holes filled smoothly from
the known pixels around them (models.compositing.pyramid_fill), so a hole cell's features
say what colour its surroundings ask for, as the membrane of a Poisson blend does, and the
hole cells fuse too, through their own zero-initialised convs V:
    h <- h + m * W [h ; t] + (1 - m) * V [h ; t]
The fill reads the known pixels only, and is 0 under an all-hole mask, so the output still
ignores the masked image there (it is then the plain decoder plus V's image-free term).

With `hole_residual`, the output's hole pixels also read the decoder's own mismatch with the
known pixels, extended into the holes by the same pull-push fill:
    out + (1 - known) * V_p [out ; fill(image - out)] (B, 6, R, R) -> (B, 3, R, R)
V_p = [0, I] adds to the holes the smooth correction that meets the known pixels at the
hole's edge, as a Poisson blend does (with a pull-push membrane instead of a harmonic one);
the decoder learns how much of it to take. V_p is zero at init, and under an all-hole mask
the fill is 0, so there too the output ignores the masked image.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.cells import known_fraction
from models.compositing import pyramid_fill
from runtime.checkpoints import load_weights

# state_dict prefixes the token ids depend on: frozen by conditional training, and what a
# conditional checkpoint must share with the transformer's tokenizer
TOKEN_SIDE = ("encoder.", "quant_conv.", "codebook.")
BRANCH = "cond."
# the branch's options, off unless a config says true (the keys build_vqgan takes)
BRANCH_OPTIONS = {"fuse_pixels": False, "hole_guide": False, "hole_residual": False}
# W_p and V_p are stored divided by this: Adam moves a weight by about lr per step, and a
# copy needs W_p = +-1, which 1200 steps at lr 5e-4 would not reach from 0
PIXEL_GAIN = 16.0


class MaskBranch(nn.Module):
    """(masked image (B, C, R, R) normalised, known (B, 1, R, R) 1 = known) -> one feature
    map per resolution of `levels`, and the zero-initialised fusion into a decoder.

    `levels` is the decoder's `fusion_levels`: (index in `decoder.model` after which to
    fuse, channels there, factor = R / feature side), factors powers of 2. The branch holds
    one trunk stage per distinct factor, finest first: the first an unshuffle to its factor
    and a 3x3 conv (it sees pixels), each next a SiLU, an unshuffle by 2 per halving and a
    1x1 conv (it only regroups), as CompactVQGAN's encoder does. A stage is as wide as the
    widest decoder level at its resolution.
    """

    def __init__(self, image_channels: int, levels: list[tuple[int, int, int]],
                 fuse_pixels: bool = False, hole_guide: bool = False, hole_residual: bool = False):
        super().__init__()
        self.levels = list(dict.fromkeys(tuple(level) for level in levels))  # one per place
        self.factors = sorted({f for _, _, f in self.levels})  # finest first
        widths = {f: max(c for _, c, g in self.levels if g == f) for f in self.factors}
        stages, prev_ch, prev_f = [], image_channels + 1, 1
        for j, f in enumerate(self.factors):
            step = f // prev_f
            if f % prev_f or step & (step - 1):
                raise ValueError(f"fusion factors {self.factors} are not powers of 2 apart")
            down = [nn.PixelUnshuffle(step)] if step > 1 else []
            if j == 0:  # (B, C+1, R, R) -> (B, (C+1) f^2, R/f, R/f) -> (B, w_f, R/f, R/f)
                stages.append(nn.Sequential(*down, nn.Conv2d(prev_ch * step * step, widths[f], 3, 1, 1)))
            else:       # (B, w, H, W) -> (B, w s^2, H/s, W/s) -> (B, w_f, H/s, W/s)
                stages.append(nn.Sequential(nn.SiLU(), *down, nn.Conv2d(prev_ch * step * step, widths[f], 1)))
            prev_ch, prev_f = widths[f], f
        self.trunk = nn.ModuleList(stages)
        # one 1x1 conv per fusion place: [h ; t] (B, c + w_f, H, W) -> (B, c, H, W), zero at init
        self.fuse = nn.ModuleList(nn.Conv2d(c + widths[f], c, 1) for _, c, f in self.levels)
        # with the guide, the same for the hole cells: [h ; t] -> (B, c, H, W), zero at init
        self.fuse_holes = nn.ModuleList(nn.Conv2d(c + widths[f], c, 1) for _, c, f in self.levels) \
            if hole_guide else None
        # [out ; masked image] (B, 2C, R, R) -> (B, C, R, R), zero at init
        self.pixels = nn.Conv2d(2 * image_channels, image_channels, 1) if fuse_pixels else None
        # [out ; fill(image - out)] (B, 2C, R, R) -> (B, C, R, R) in the holes, zero at init
        self.residual = nn.Conv2d(2 * image_channels, image_channels, 1) if hole_residual else None
        for conv in self.fusion_convs():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def fusion_convs(self) -> list[nn.Conv2d]:
        """Every conv that fuses into the decoder, each zero at init: one per level, then the
        pixel-space ones (`pixel_convs`)."""
        return [*self.fuse, *(self.fuse_holes or []), *self.pixel_convs()]

    def pixel_convs(self) -> list[nn.Conv2d]:
        """The fusions at the output itself (factor 1): the known pixels', then the holes' residual."""
        return [c for c in (self.pixels, self.residual) if c is not None]

    def forward(self, image: torch.Tensor, known: torch.Tensor) -> dict[int, torch.Tensor]:
        """-> {factor: t (B, w_f, R/f, R/f)}. Hole pixels are zeroed first (or, with the guide,
        filled from the known ones), so whatever a masked file paints into its holes (the
        suite's grey) never reaches the decoder."""
        known = known.to(image.dtype)
        seen = pyramid_fill(image, known) if self.fuse_holes is not None else image * known
        x = torch.cat([seen, known], 1)  # (B, C+1, R, R)
        feats = {}
        for f, stage in zip(self.factors, self.trunk):
            x = stage(x)
            feats[f] = x  # (B, w_f, R/f, R/f)
        return feats

    def decode(self, decoder: nn.Module, z: torch.Tensor, image: torch.Tensor,
               known: torch.Tensor) -> torch.Tensor:
        """`decoder.model` (an nn.Sequential) layer by layer on z, fusing the branch's features
        after each layer of `levels`: h + m * W [h ; t], then with `fuse_pixels` the masked
        image into the output and with `hole_residual` the filled mismatch into its holes.
        Returns the decoder's output."""
        feats = self(image, known)
        at = {index: i for i, (index, _, _) in enumerate(self.levels)}
        h = z
        for j, layer in enumerate(decoder.model):
            h = layer(h)
            if j in at:
                _, _, f = self.levels[at[j]]
                t = feats[f].to(h.dtype)                                 # (B, w_f, H, W)
                m = known_fraction(known, h.shape[-1]).to(h.dtype)      # (B, 1, H, W) in [0, 1]
                ht = torch.cat([h, t], 1)
                fused = m * self.fuse[at[j]](ht)                          # (B, c, H, W)
                if self.fuse_holes is not None:
                    fused = fused + (1 - m) * self.fuse_holes[at[j]](ht)
                h = h + fused
        k, image = known.to(h.dtype), image.to(h.dtype)                  # (B, 1, R, R), (B, C, R, R)
        out = h  # both pixel fusions read the decoder's own output
        if self.pixels is not None:
            h = h + k * PIXEL_GAIN * self.pixels(torch.cat([out, image * k], 1))
        if self.residual is not None:
            mismatch = pyramid_fill(image - out, k)                      # (B, C, R, R)
            h = h + (1 - k) * PIXEL_GAIN * self.residual(torch.cat([out, mismatch], 1))
        return h


def scramble_partly_known(indices: torch.Tensor, known: torch.Tensor, num_codes: int, p: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """indices (B, r*r) row-major, known (B, 1, R, R) 1 = known -> indices (B, r*r) where each
    token whose cell is partly known (some of its pixels, not all) is, with probability p,
    a code drawn uniformly from [0, num_codes).

    Inpainting re-predicts every token that touches a hole (models/decoding.py), so in the
    partly known cells the decoder gets the transformer's guess, which need not agree with
    the known pixels beside it; trained on true tokens only, it trusts the token there.
    Scrambled tokens teach it to take those pixels from the branch. Fully hole cells keep
    their tokens: nothing else tells the decoder what goes there. The draws are on the CPU
    (the global RNG the checkpoints carry, unless `generator`)."""
    frac = known_fraction(known, math.isqrt(indices.shape[1])).flatten(1)  # (B, r*r)
    partly = (frac > 0) & (frac < 1)
    swap = torch.rand(indices.shape, generator=generator).to(indices.device) < p
    codes = torch.randint(num_codes, indices.shape, generator=generator).to(indices.device)
    return torch.where(partly & swap, codes, indices)


def decoder_side(vq: nn.Module) -> list[nn.Module]:
    """The modules that turn tokens into pixels: what conditional training fine-tunes."""
    names = ("post_quant_conv", "decoder", "cond")
    return [getattr(vq, n) for n in names if getattr(vq, n, None) is not None]


def freeze_token_side(vq: nn.Module) -> list[nn.Parameter]:
    """Freeze everything the token ids depend on (encoder, quant_conv, codebook) and return
    the decoder side's parameters. Call `token_side_eval(vq)` after every `.train()`: an
    EMA codebook would otherwise move its codes."""
    vq.requires_grad_(False)
    params = [p for m in decoder_side(vq) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def token_side_eval(vq: nn.Module) -> None:
    for name in ("encoder", "quant_conv", "codebook"):
        module = getattr(vq, name, None)
        if module is not None:
            module.eval()


def token_side_state(vq: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict entries the token ids depend on."""
    return {k: v for k, v in vq.state_dict().items() if k.startswith(TOKEN_SIDE)}


def same_tokens(a: nn.Module, b: nn.Module) -> bool:
    """Whether two tokenizers give the same token ids: equal encoder side, bit for bit."""
    sa, sb = token_side_state(a), token_side_state(b)
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def load_tokenizer_weights(model: nn.Module, state: dict, source, verbose: bool = True) -> list[str]:
    """`load_weights` (strict, one-line error on a misfit), except that a plain checkpoint
    (no `cond.*` key at all) also fits a conditional model: its branch keys are new, keep
    their initial state (zero fusion: the output is the plain decoder's), and are named in
    one line. Returns the new keys."""
    own = model.state_dict()
    new = [k for k in own if k.startswith(BRANCH) and k not in state]
    if not new or any(k.startswith(BRANCH) for k in state):
        new = []  # a conditional checkpoint must hold its whole branch: strict as ever
    state = {**state, **{k: own[k] for k in new}}
    load_weights(model, state, source)
    if new and verbose:
        print(f"{source}: plain checkpoint, {len(new)} new conditional-branch keys start where the "
              f"output equals the plain decoder's: {', '.join(new)}")
    return new


def count_branch(vq: nn.Module, image_resolution: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of the branch `vq.cond`: every conv of
    the trunk and the fusion, counted from its weight shape and output size."""
    branch = vq.cond
    params = sum(p.numel() for p in branch.parameters())
    macs, side = 0, image_resolution
    for f, stage in zip(branch.factors, branch.trunk):
        conv = stage[-1]
        macs += conv.weight.numel() * (side // f) ** 2
    places = [f for _, _, f in branch.levels]
    fusions = [*zip(places, branch.fuse), *zip(places, branch.fuse_holes or []),
               *((1, conv) for conv in branch.pixel_convs())]  # at the output: factor 1
    for f, conv in fusions:
        macs += conv.weight.numel() * (side // f) ** 2
    return params, macs
