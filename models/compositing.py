"""Put generated pixels into the holes of the known image.

The VQGAN redraws the whole image, known pixels included, and its colours drift a
little (a 2-epoch CPU VQGAN drifts a lot). Pasting the known pixels back keeps them
exact but leaves a seam wherever the drift meets the hole's edge. Poisson blending
(Perez, Gangnet and Blake, 2003, "seamless cloning") removes the seam: inside the hole
it keeps the generated image's gradients and adds the smooth correction that makes
the border match.

All images are (B, C, H, W) in [0, 1]; `known` is (B, 1, H, W), True / 1 = known pixel.
"""
import torch
import torch.nn.functional as F

MODES = ("paste", "poisson")


def paste(generated: torch.Tensor, image: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Known pixels from `image`, hole pixels from `generated`."""
    return torch.where(known.bool(), image, generated)


def neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> sum of each pixel's 4 neighbours; outside the image counts as 0."""
    p = F.pad(x, (1, 1, 1, 1))  # (B, C, H+2, W+2)
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]


def harmonic_fill(values: torch.Tensor, hole: torch.Tensor, rtol: float = 1e-5,
                  max_iter: int | None = None) -> torch.Tensor:
    """The function that equals `values` outside `hole` and is discrete-harmonic inside it
    (each hole pixel is the mean of its in-image neighbours), by conjugate gradients on
    the hole's graph Laplacian, batched over images and channels.

    values: (B, C, H, W), read outside the hole only; hole: (B, 1, H, W) in {0, 1}.
    A hole region with no known neighbour (e.g. a whole-image hole) gets 0.
    """
    hole = hole.to(values.dtype)
    degree = neighbour_sum(torch.ones_like(hole))  # 4 inside, 3 on the edges, 2 in corners

    def laplacian(d):  # L d on the hole's pixels, 0 elsewhere: symmetric positive definite
        return hole * (degree * d - neighbour_sum(hole * d))

    dims = (-2, -1)
    b = hole * neighbour_sum((1 - hole) * values)  # what the known neighbours contribute
    d, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), (r * r).sum(dims, keepdim=True)  # (B, C, 1, 1)
    stop = (rtol * b.norm(dim=dims, keepdim=True)) ** 2
    # exact after at most (hole pixels) steps; a 64x64 lab hole converges in ~100
    for _ in range(max_iter or values.shape[-1] * values.shape[-2]):
        active = rr > stop  # (B, C, 1, 1); converged systems stop moving, so batching never matters
        if not bool(active.any()):
            break
        Ap = laplacian(p)
        alpha = rr / (p * Ap).sum(dims, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)
        alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        d, r = d + alpha * p, r - alpha * Ap
        rr_next = (r * r).sum(dims, keepdim=True)
        p, rr = r + (rr_next / rr.clamp_min(torch.finfo(values.dtype).tiny)) * p, rr_next
    return torch.where(hole.bool(), d, values)


def pyramid_fill(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`values` outside the holes, and in each hole pixel the mean of the known pixels in
    the finest pyramid cell around it that has any, upsampled bilinearly from cell to cell
    (pull-push; Gortler et al. 1996, "The Lumigraph"): a smooth fill in a few poolings,
    where harmonic_fill's solve takes hundreds of steps on a large hole.

    values: (B, C, H, W), read where `known` (B, 1, H, W) is 1; 0 everywhere when nothing
    is known.
    """
    known = known.to(values.dtype)
    if min(values.shape[-2:]) == 1:
        return values * known
    weight = F.avg_pool2d(known, 2, ceil_mode=True)  # (B, 1, H/2, W/2): known fraction
    mean = F.avg_pool2d(values * known, 2, ceil_mode=True) / weight.clamp_min(torch.finfo(values.dtype).tiny)
    coarse = pyramid_fill(mean, (weight > 0).to(values.dtype))
    up = F.interpolate(coarse, size=values.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(known.bool(), values, up)


def poisson_blend(generated: torch.Tensor, image: torch.Tensor, known: torch.Tensor,
                  pixel_range: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Seamless cloning of `generated` into the holes of `image`: the hole gets
    generated + h, where h is harmonic in the hole and equals image - generated on the
    known pixels around it, so the result is continuous across the hole's edge. Known
    pixels stay exactly those of `image`. The blend is clamped to `pixel_range`; None
    leaves it linear, e.g. on normalised images."""
    x = generated.float()  # the solve wants fp32 even under bf16 inference
    blend = x + harmonic_fill(image.float() - x, ~known.bool())
    if pixel_range is not None:
        blend = blend.clamp(*pixel_range)
    return paste(blend, image.float(), known).to(generated.dtype)


def composite(generated: torch.Tensor, image: torch.Tensor, known: torch.Tensor,
              mode: str | None) -> torch.Tensor:
    """`mode`: None (the generated image as is), "paste" or "poisson"."""
    if mode is None:
        return generated
    if mode == "paste":
        return paste(generated, image, known)
    if mode == "poisson":
        return poisson_blend(generated, image, known)
    raise ValueError(f"unknown composite mode {mode!r}; choose from {MODES}")
