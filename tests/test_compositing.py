"""Compositing generated pixels into the known image: pasting, and Poisson blending
checked against a dense linear solve built here pixel by pixel."""
import pytest
import torch

from models.compositing import composite, harmonic_fill, neighbour_sum, paste, poisson_blend, pyramid_fill


def random_case(b=3, c=3, h=9, w=7, hole_fraction=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, c, h, w, generator=g) * 0.6 + 0.2  # (B, C, H, W) in [0.2, 0.8]
    known = torch.rand(b, 1, h, w, generator=g) >= hole_fraction
    known[..., 0, 0] = True  # every image keeps a known pixel
    return image, known, g


def dense_harmonic(values: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Reference for one (H, W) channel: every hole pixel times its in-image neighbour
    count minus its hole neighbours equals the sum of its known neighbours, solved
    densely in float64."""
    h, w = values.shape
    pixels = [(y, x) for y in range(h) for x in range(w) if hole[y, x]]
    index = {p: k for k, p in enumerate(pixels)}
    A = torch.zeros(len(pixels), len(pixels), dtype=torch.float64)
    rhs = torch.zeros(len(pixels), dtype=torch.float64)
    for k, (y, x) in enumerate(pixels):
        for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= yy < h and 0 <= xx < w:
                A[k, k] += 1
                if hole[yy, xx]:
                    A[k, index[(yy, xx)]] -= 1
                else:
                    rhs[k] += values[yy, xx]
    out = values.double().clone()
    for (y, x), v in zip(pixels, torch.linalg.solve(A, rhs)):
        out[y, x] = v
    return out


def test_neighbour_sum_counts_in_image_neighbours():
    counts = neighbour_sum(torch.ones(1, 1, 4, 5))[0, 0]
    assert counts[0, 0] == 2 and counts[0, 2] == 3 and counts[2, 2] == 4 and counts[3, 4] == 2


def test_harmonic_fill_matches_a_dense_solve():
    values, known, _ = random_case()
    hole = ~known
    got = harmonic_fill(values, hole)
    for b in range(values.shape[0]):
        for c in range(values.shape[1]):
            want = dense_harmonic(values[b, c], hole[b, 0])
            torch.testing.assert_close(got[b, c].double(), want, atol=1e-5, rtol=0)
    assert torch.equal(got[known.expand_as(got)], values[known.expand_as(values)])


def test_poisson_blend_removes_a_constant_colour_drift_exactly():
    image, known, g = random_case(h=16, w=16)
    drift = (torch.rand(3, 3, 1, 1, generator=g) - 0.5) * 0.3  # per image and channel
    out = poisson_blend(image + drift, image, known)
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    pasted = paste(image + drift, image, known)
    assert (pasted - image).abs().amax() > 0.05  # what pasting alone leaves: a seam


def test_poisson_blend_keeps_known_pixels_and_the_holes_gradients():
    image, known, g = random_case(h=12, w=12)
    # generated in [0.45, 0.55]: the correction stays under 0.35, so nothing is clamped
    generated = 0.45 + 0.1 * torch.rand(image.shape, generator=g)
    out = poisson_blend(generated, image, known)
    assert torch.equal(out[known.expand_as(out)], image[known.expand_as(image)])
    # the change inside the hole is harmonic: each hole pixel's change is the mean of its
    # neighbours' changes (image - generated on the known ones)
    change = out - generated
    degree = neighbour_sum(torch.ones_like(known, dtype=out.dtype))
    residual = (degree * change - neighbour_sum(change))[(~known).expand_as(out)]
    assert residual.numel() > 50 and residual.abs().max() < 1e-4
    assert (out - generated)[(~known).expand_as(out)].abs().max() > 0.01  # it did correct


def test_poisson_blend_without_a_pixel_range_is_linear():
    """pixel_range=None skips the clamp, so blending normalised images (2x - 1) gives the
    normalised blend; the default clamps the holes to [0, 1], cutting off every negative."""
    image, known, g = random_case(h=12, w=12)
    generated = torch.rand(image.shape, generator=g)
    normalise = lambda x: 2 * x - 1
    linear = poisson_blend(normalise(generated), normalise(image), known, pixel_range=None)
    torch.testing.assert_close(linear, normalise(poisson_blend(generated, image, known, pixel_range=None)))
    hole = (~known).expand_as(linear)
    assert linear[hole].amin() < 0
    assert poisson_blend(normalise(generated), normalise(image), known)[hole].amin() >= 0


def test_poisson_blend_is_batch_independent():
    image, known, g = random_case(b=4, h=10, w=10)
    generated = torch.rand(image.shape, generator=g)
    together = poisson_blend(generated, image, known)
    alone = torch.cat([poisson_blend(generated[i:i + 1], image[i:i + 1], known[i:i + 1])
                       for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_no_known_pixel_and_no_hole():
    image, _, g = random_case(b=1)
    generated = torch.rand(image.shape, generator=g)
    nothing_known = torch.zeros(1, 1, *image.shape[-2:], dtype=torch.bool)
    assert torch.equal(poisson_blend(generated, image, nothing_known), generated)
    assert torch.equal(poisson_blend(generated, image, ~nothing_known), image)


def test_pyramid_fill_keeps_the_known_pixels_and_fills_from_them():
    image, known, g = random_case(b=4, h=16, w=16, hole_fraction=0.6)
    known = known.float()
    out = pyramid_fill(image, known)
    assert torch.equal(out * known, image * known)
    painted = torch.where(known.bool(), image, torch.rand(image.shape, generator=g))
    assert torch.equal(pyramid_fill(painted, known), out)  # the hole's paint never matters
    # each hole pixel is a weighted mean of known pixels: inside their range, per channel
    lo = torch.where(known.bool(), image, torch.inf).amin((-2, -1), keepdim=True)
    hi = torch.where(known.bool(), image, -torch.inf).amax((-2, -1), keepdim=True)
    assert ((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()
    flat = torch.full_like(image, 0.3)
    torch.testing.assert_close(pyramid_fill(flat, known), flat, atol=1e-6, rtol=0)
    assert torch.equal(pyramid_fill(image, torch.zeros_like(known)), torch.zeros_like(image))
    assert torch.equal(pyramid_fill(image, torch.ones_like(known)), image)


def test_pyramid_fill_takes_the_mean_of_the_enclosing_cell():
    values = torch.tensor([[[[0.1, 0.2], [0.6, 0.9]]]])   # (1, 1, 2, 2)
    known = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    assert pyramid_fill(values, known)[0, 0, 1, 1].item() == pytest.approx(0.3)


def test_composite_modes():
    image, known, g = random_case()
    generated = torch.rand(image.shape, generator=g)
    assert composite(generated, image, known, None) is generated
    assert torch.equal(composite(generated, image, known, "paste"), torch.where(known, image, generated))
    assert torch.equal(composite(generated, image, known, "poisson"), poisson_blend(generated, image, known))
    with pytest.raises(ValueError, match="unknown composite mode"):
        composite(generated, image, known, "telea")
