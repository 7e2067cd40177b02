"""Stage-1 losses: reconstruction, codebook, an adaptively weighted hinge GAN loss and
feature matching on the discriminator."""
import torch
import torch.nn.functional as F


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adopt_weight(weight: float, step: int, start: int) -> float:
    """The GAN term is off until `start`, so the autoencoder learns to reconstruct first."""
    return weight if step >= start else 0.0


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor,
                        last_layer: torch.Tensor) -> torch.Tensor:
    """Balance the GAN gradient against the reconstruction gradient at the last layer
    (Esser et al., 2021): lambda = |grad rec| / (|grad gan| + 1e-4), clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, l2_weight: float,
                        pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """L1 for sharpness plus an optional L2 term for PSNR, both means over every pixel;
    `pixel_weight` (B, 1, R, R) scales each pixel's terms (e.g. the holes of a mask, as in
    the partial-convolution inpainting loss, Liu et al. 2018)."""
    diff = x - x_rec
    w = 1.0 if pixel_weight is None else pixel_weight
    loss = (w * diff.abs()).mean()
    if l2_weight:
        loss = loss + l2_weight * (w * diff.square()).mean()
    return loss


def feature_matching_loss(feats_fake: list[torch.Tensor], feats_real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the discriminator's layers of the L1 distance between its activations on
    the reconstruction and on the real image (pix2pixHD, Wang et al. 2018). Unlike the hinge
    term it does not saturate when the discriminator wins; the real side carries no gradient."""
    return torch.stack([(f.float() - r.detach().float()).abs().mean()
                        for f, r in zip(feats_fake, feats_real)]).mean()


def generator_loss(x, x_rec, q_loss, logits_fake, last_layer, gan_weight: float,
                   l2_weight: float = 0.0, fm_loss: torch.Tensor | None = None,
                   fm_weight: float = 0.0, pixel_weight: torch.Tensor | None = None):
    """Autoencoder objective. Returns (loss, log dict); `gan_weight` 0 skips the GAN term,
    `fm_weight` 0 (or no `fm_loss`) the feature-matching term; `pixel_weight` as in
    `reconstruction_loss`."""
    rec = reconstruction_loss(x, x_rec, l2_weight, pixel_weight)
    loss = rec + q_loss
    log = {"rec": rec.item(), "q": q_loss.item()}
    if gan_weight > 0:
        g_loss = -logits_fake.mean()
        lam = adaptive_gan_weight(rec, g_loss, last_layer)
        loss = loss + gan_weight * lam * g_loss
        log.update(g=g_loss.item(), lam=lam.item())
    if fm_weight > 0 and fm_loss is not None:
        loss = loss + fm_weight * fm_loss
        log["fm"] = fm_loss.item()
    return loss, log
