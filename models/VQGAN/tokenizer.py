"""The contract every stage-1 tokenizer keeps, whatever its module tree."""
import torch
import torch.nn as nn

from .conditional import scramble_partly_known


class Tokenizer(nn.Module):
    """A subclass defines `encode(x) -> (z_q, indices, q_loss)`, `decode(z_q, image, known)`,
    `latents(x)`, `last_layer`, `codebook` (with `embed` and `restart_dead_codes`),
    `latent_resolution`, `num_codebook_vectors` and `cond` (a conditional.MaskBranch, or None
    for a plain tokenizer). Images are normalised; indices (B, r*r) are row-major in [0, K);
    known (B, 1, R, R) is 1 at known pixels."""

    latent_resolution: int
    num_codebook_vectors: int

    def decode_indices(self, indices: torch.Tensor, image: torch.Tensor | None = None,
                       known: torch.Tensor | None = None) -> torch.Tensor:
        """indices (B, r*r) in [0, K) -> image (B, 3, R, R); with `known`, through the
        conditional branch, which reads the pixels of `image` where `known` is 1."""
        r = self.latent_resolution
        return self.decode(self.codebook.embed(indices, r, r), image, known)

    def forward(self, x: torch.Tensor, known: torch.Tensor | None = None, token_noise: float = 0.0):
        """x (B, 3, R, R) -> (reconstruction (B, 3, R, R), indices (B, r*r), q_loss); with
        `known`, decoded through the conditional branch from x's known pixels, after the
        tokens of partly known cells are scrambled with probability `token_noise`
        (conditional training, conditional.scramble_partly_known). The indices returned are
        the encoder's."""
        z_q, indices, q_loss = self.encode(x)
        if token_noise > 0:
            r = self.latent_resolution
            z_q = self.codebook.embed(scramble_partly_known(indices, known, self.num_codebook_vectors,
                                                            token_noise), r, r)
        return self.decode(z_q, x, known), indices, q_loss

    def run_decoder(self, h: torch.Tensor, image: torch.Tensor | None,
                    known: torch.Tensor | None) -> torch.Tensor:
        """The decoder on its input h, plain without `known`, else fused with the branch."""
        if known is None:
            return self.decoder(h)
        if self.cond is None:
            raise ValueError("this tokenizer has no conditional branch; build it from a config "
                             "with conditional: true")
        return self.cond.decode(self.decoder, h, image, known)
