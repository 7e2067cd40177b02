"""The lab's way of inpainting and training, kept as the baseline of the benchmarks.

Written after the lab template on our modules (MaskGit, its VQGAN and transformer), not
on models/decoding.py, so the benchmarks compare against independent code:
  * one image at a time, fp32, the hand-written attention (set by the caller, see
    common.lab_path);
  * tokens drawn with torch.distributions.Categorical, drawn again wherever [MASK] comes out;
  * confidence = p(sampled) + temperature * (1 - t/T) * Gumbel noise;
  * a VQGAN decode after every step, because the lab saves each step's image (imga);
  * training runs the frozen VQGAN encoder on every batch and logs loss.item() every step.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributions import Categorical

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.VQGAN_Transformer import MaskGit  # noqa: E402


@torch.no_grad()
def complete_lab_style(model: MaskGit, z: torch.Tensor, total_iter: int):
    """z (1, N) token ids of the masked image (the lab encodes it first, as ours does), with
    [MASK] (K) where the token is to be inpainted.

    Returns (the last step's image (1, 3, R, R), tokens (1, N) in [0, K), imga: the
    decoded image after each step).
    """
    mask_id = model.mask_token_id
    mask = z == mask_id
    mask_num = int(mask.sum())
    imga = []
    for step in range(total_iter):
        probs = F.softmax(model.transformer(torch.where(mask, mask_id, z)), dim=-1)  # (1, N, K+1)
        dist = Categorical(probs=probs)
        pred = dist.sample()  # (1, N)
        while (pred == mask_id).any():  # [MASK] is not an image token: draw those again
            pred = torch.where(pred == mask_id, dist.sample(), pred)
        pred = torch.where(mask, pred, z)
        ratio = (step + 1) / total_iter
        prob = probs.gather(-1, pred.unsqueeze(-1)).squeeze(-1)  # (1, N)
        gumbel = -torch.log(-torch.log(torch.rand_like(prob)))
        confidence = prob + model.choice_temperature * (1 - ratio) * gumbel
        confidence = torch.where(mask, confidence, math.inf)  # known tokens are never re-masked
        n_masked = math.floor(mask_num * model.gamma(ratio))
        z = pred
        mask = torch.zeros_like(mask)
        mask[0, confidence[0].argsort()[:n_masked]] = True  # least confident stay masked
        imga.append(model.vqgan.decode_indices(z))
    return imga[-1], z, imga


def train_step_lab_style(model: MaskGit, images: torch.Tensor, opt: torch.optim.Optimizer) -> float:
    """One fp32 step on normalised images (B, 3, R, R): encode, mask, predict, update.

    The lab template masks one ratio gamma(r) of the tokens per batch and predicts logits
    at every token (B, N, K+1); the loss reads the masked ones."""
    model.train()
    _, z = model.encode_to_z(images)  # (B, N); the frozen VQGAN runs again on every batch
    b, n = z.shape
    n_mask = max(1, math.ceil(model.gamma(float(torch.rand(1))) * n))
    picked = torch.rand(b, n, device=z.device).topk(n_mask, dim=1).indices  # (B, n_mask)
    masked = torch.zeros_like(z, dtype=torch.bool).scatter_(1, picked, True)  # (B, N)
    logits = model.transformer(torch.where(masked, model.mask_token_id, z))  # (B, N, K+1)
    loss = F.cross_entropy(logits[masked], z[masked])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()  # the lab prints the loss every step (a device sync on CUDA)
