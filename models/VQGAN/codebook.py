"""Vector quantiser: nearest-codebook lookup with a straight-through gradient."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Codebook(nn.Module):
    def __init__(self, num_codebook_vectors: int, latent_dim: int, beta: float):
        super().__init__()
        self.num_codebook_vectors = num_codebook_vectors
        self.latent_dim = latent_dim
        self.beta = beta
        self.embedding = nn.Embedding(num_codebook_vectors, latent_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_codebook_vectors, 1.0 / num_codebook_vectors)

    @torch.no_grad()
    def lookup(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Nearest code id for each row of z_flat (M, D) -> (M,) in [0, K), in fp32 under any
        autocast (a bf16 distance rounds near codes together and picks the first of them)."""
        e = self.embedding.weight.float()
        with torch.autocast(z_flat.device.type, enabled=False):
            # |z - e|^2 = |z|^2 - 2 z.e + |e|^2; |z|^2 is constant per row and dropped
            dist = e.pow(2).sum(1) - 2 * z_flat.float() @ e.t()  # (M, K)
        return dist.min(dim=1).indices  # argmin's index (the first minimum), faster on a CPU

    def forward(self, z: torch.Tensor):
        """z (B, D, h, w) -> z_q (B, D, h, w), indices (B, h*w) row-major, loss (scalar).

        loss = |sg[z_q] - z|^2 * beta (commitment) + |z_q - sg[z]|^2 (codebook).
        """
        b, d, h, w = z.shape
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D), row-major over (h, w)
        indices = self.lookup(z_flat.detach().float())
        z_q = self.embedding(indices).view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        loss = self.beta * F.mse_loss(z, z_q.detach()) + F.mse_loss(z_q, z.detach())
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q, indices.view(b, h * w), loss

    def embed(self, indices: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """indices (B, h*w) in [0, K) -> z_q (B, D, h, w)."""
        return self.embedding(indices).view(indices.shape[0], h, w, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def restart_dead_codes(self, counts: torch.Tensor, z_flat: torch.Tensor) -> int:
        """Re-initialise codes with zero `counts` to random encoder outputs `z_flat` (M, D).

        Dead codes never receive a gradient, so without this a large codebook
        collapses to a few dozen entries.
        """
        dead = (counts == 0).nonzero().flatten()
        if len(dead) == 0 or len(z_flat) == 0:
            return 0
        pick = torch.randint(len(z_flat), (len(dead),), device=z_flat.device)
        self.embedding.weight.data[dead] = z_flat[pick].to(self.embedding.weight.dtype)
        return len(dead)


def codebook_usage(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, float, float]:
    """Counts per code, fraction of codes used, and perplexity exp(H(p)) of `indices`."""
    counts = torch.bincount(indices.flatten(), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()).item()
    return counts, (counts > 0).float().mean().item(), perplexity
