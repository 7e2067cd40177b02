"""Stage-1 losses: reconstruction, codebook and an adaptively weighted hinge GAN loss."""
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


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, l2_weight: float) -> torch.Tensor:
    """L1 for sharpness plus an optional L2 term for PSNR."""
    loss = (x - x_rec).abs().mean()
    if l2_weight:
        loss = loss + l2_weight * F.mse_loss(x_rec, x)
    return loss


def generator_loss(x, x_rec, q_loss, logits_fake, last_layer, gan_weight: float,
                   l2_weight: float = 0.0):
    """Autoencoder objective. Returns (loss, log dict); `gan_weight` 0 skips the GAN term."""
    rec = reconstruction_loss(x, x_rec, l2_weight)
    loss = rec + q_loss
    log = {"rec": rec.item(), "q": q_loss.item()}
    if gan_weight > 0:
        g_loss = -logits_fake.mean()
        lam = adaptive_gan_weight(rec, g_loss, last_layer)
        loss = loss + gan_weight * lam * g_loss
        log.update(g=g_loss.item(), lam=lam.item())
    return loss, log
