"""The contract every stage-1 tokenizer keeps, whatever its module tree."""
import torch
import torch.nn as nn


class Tokenizer(nn.Module):
    """A subclass defines `encode(x) -> (z_q, indices, q_loss)`, `decode(z_q)`, `latents(x)`,
    `last_layer`, `codebook` (with `embed` and `restart_dead_codes`), `latent_resolution`
    and `num_codebook_vectors`. Images are normalised; indices (B, r*r) are row-major in
    [0, K)."""

    latent_resolution: int
    num_codebook_vectors: int

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, r*r) in [0, K) -> image (B, 3, R, R)."""
        r = self.latent_resolution
        return self.decode(self.codebook.embed(indices, r, r))

    def forward(self, x: torch.Tensor):
        """x (B, 3, R, R) -> (reconstruction (B, 3, R, R), indices (B, r*r), q_loss)."""
        z_q, indices, q_loss = self.encode(x)
        return self.decode(z_q), indices, q_loss
