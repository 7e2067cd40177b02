"""FID: Fréchet maths against scipy, the Inception preprocessing, loading errors, the CLI.

Inception runs are kept to a handful of small images (~0.1-0.3 s per image on CPU).
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from metrics.fid import (calculate_fid_given_paths, load_images,  # noqa: E402
                         save_statistics, statistics_of_path)
from metrics.frechet import (compute_statistics, frechet_distance, frechet_distance_sqrtm,  # noqa: E402
                             psd_factor, trace_sqrt_product)
from metrics.inception import (inception_features, load_inception, preprocess,  # noqa: E402
                               tf_bilinear_weights)
from utils import UserError  # noqa: E402

CLI = REPO / "faster-pytorch-fid" / "fid_score_gpu.py"


# ----------------------------------------------------------------------------- fixtures

def write_pngs(folder: Path, arrays) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"img_{i:03d}.png")
    return folder


def random_images(seed: int, n: int, size: int = 32, smooth: bool = False) -> list:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3))
    if smooth:  # a visibly different distribution: low-contrast horizontal gradients
        images = np.broadcast_to(np.linspace(60, 120, size)[None, None, :, None], images.shape) + images % 8
    return [a.astype(np.uint8) for a in images]


@pytest.fixture(scope="module")
def model():
    return load_inception("cpu")


# ----------------------------------------------------------------------------- Fréchet maths

@pytest.mark.parametrize("dim,n", [(4, 50), (64, 500), (256, 100), (300, 1000)])
def test_frechet_matches_scipy(dim, n):
    rng = np.random.default_rng(dim + n)
    a = rng.standard_normal((n, dim)) @ rng.standard_normal((dim, dim)) * 0.1
    b = np.abs(rng.standard_normal((n, dim))) + 0.05  # n < dim gives singular covariances
    stats_a, stats_b = compute_statistics(a), compute_statistics(b)
    ours = frechet_distance(*stats_a, *stats_b)
    assert ours == pytest.approx(frechet_distance_sqrtm(*stats_a, *stats_b), rel=1e-6)


def test_psd_factor_stops_at_the_rank():
    rng = np.random.default_rng(7)
    singular = compute_statistics(rng.standard_normal((30, 64)))[1]  # rank 29 < 64
    full = compute_statistics(rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64)))[1]
    for cov, rank in ((singular, 29), (full, 64)):
        f = psd_factor(cov)
        assert f.shape == (64, rank)
        np.testing.assert_allclose(f @ f.T, cov, atol=1e-10 * np.abs(cov).max())


def test_definite_and_singular_routes_agree():
    """sigma1 positive definite takes the generalized eigensolver, singular sigma1 the
    pivoted factor; tr sqrtm(AB) = tr sqrtm(BA) ties the two routes together. (Equal to
    ~1e-9, not 1e-15: rounding leaves the zero eigenvalues at ~1e-16 of the largest, and
    their square roots add up.)"""
    rng = np.random.default_rng(8)
    full = compute_statistics(rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64)))[1]
    singular = compute_statistics(rng.standard_normal((30, 64)) ** 2)[1]
    f = psd_factor(full)
    by_factor = np.sqrt(np.clip(np.linalg.eigvalsh(f.T @ singular @ f), 0, None)).sum()
    assert trace_sqrt_product(full, singular) == pytest.approx(by_factor, rel=1e-8)
    assert trace_sqrt_product(singular, full) == pytest.approx(by_factor, rel=1e-8)
    assert trace_sqrt_product(singular, singular) == pytest.approx(np.trace(singular), rel=1e-8)


def test_frechet_rejects_non_finite_statistics():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(UserError, match="NaN or inf"):
        frechet_distance(mu, sigma, mu + np.nan, sigma)


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = compute_statistics(rng.standard_normal((100, 256)))  # singular (N < D)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 3, 20), rng.uniform(0, 3, 20)
    a[:3] = 0  # zero variances are allowed
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_is_symmetric_and_rejects_mismatched_dims():
    rng = np.random.default_rng(2)
    s1, s2 = compute_statistics(rng.standard_normal((40, 10))), compute_statistics(rng.random((40, 10)))
    assert frechet_distance(*s1, *s2) == pytest.approx(frechet_distance(*s2, *s1), rel=1e-10)
    with pytest.raises(UserError, match="do not match"):
        frechet_distance(s1[0], s1[1], s2[0][:5], s2[1][:5, :5])


def test_statistics_need_two_samples():
    with pytest.raises(UserError, match="at least 2"):
        compute_statistics(np.zeros((1, 8)))


# ----------------------------------------------------------------------------- extractor

def test_preprocess_range_and_constant_images():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 64, 64)
    out = preprocess(x)
    assert out.shape == (2, 3, 299, 299)
    assert torch.all(out[0] == -1) and torch.allclose(out[1], torch.tensor(0.9921875), atol=1e-6)
    grey = preprocess(torch.full((1, 3, 64, 64), 77, dtype=torch.uint8))
    assert torch.allclose(grey, torch.tensor((77 - 128) / 128), atol=1e-6)


def test_tf_bilinear_matches_definition():
    """Output i samples input i * n_in / n_out (no half-pixel shift), border repeated."""
    n_in, n_out = 5, 12
    line = torch.tensor([3.0, 10.0, -2.0, 7.0, 1.0])
    expected = []
    for i in range(n_out):
        s = i * n_in / n_out
        lo = min(int(s), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        expected.append(line[lo] * (1 - (s - lo)) + line[hi] * (s - lo))
    assert torch.allclose(tf_bilinear_weights(n_in, n_out) @ line, torch.stack(expected), atol=1e-5)
    assert torch.equal(tf_bilinear_weights(7, 7), torch.eye(7))


def test_features_shape_finite_and_equal_for_equal_images(model):
    const = torch.full((1, 3, 32, 32), 90, dtype=torch.uint8)
    const[:, 0] = 200  # a reddish constant colour
    noise = torch.from_numpy(np.stack(random_images(0, 1))).permute(0, 3, 1, 2)
    # batch_size=2 puts the two copies of `const` in different batches
    feats = inception_features(torch.cat([const, noise, const]), model, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], feats[2], rtol=1e-5, atol=1e-6)
    assert np.abs(feats[0] - feats[1]).max() > 1e-2


def test_fid_of_folder_with_itself_is_zero_and_different_sets_positive(tmp_path):
    a = write_pngs(tmp_path / "a", random_images(0, 3))
    b = write_pngs(tmp_path / "b", random_images(1, 3, smooth=True))
    mu, sigma = save_statistics(a, tmp_path / "a.npz", device="cpu")
    cached = statistics_of_path(tmp_path / "a.npz")
    assert np.array_equal(mu, cached[0]) and np.array_equal(sigma, cached[1])
    assert calculate_fid_given_paths(a, tmp_path / "a.npz", device="cpu") == pytest.approx(0.0, abs=1e-3)
    assert calculate_fid_given_paths(b, tmp_path / "a.npz", device="cpu", batch_size=2) > 1.0


# ----------------------------------------------------------------------------- loading and errors

def test_csv_round_trip(tmp_path):
    images = np.stack(random_images(3, 3, size=64))  # (3, 64, 64, 3) HWC
    csv = tmp_path / "gt.csv"
    header = ",".join(f"p{i}" for i in range(64 * 64 * 3))
    csv.write_text(header + "\n" + "\n".join(",".join(map(str, a.ravel())) for a in images) + "\n")
    loaded = load_images(csv)
    assert loaded.dtype == torch.uint8
    assert torch.equal(loaded, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_csv_bad_row_length_names_file_and_line(tmp_path):
    csv = tmp_path / "bad.csv"
    good = ",".join(["1"] * (64 * 64 * 3))
    csv.write_text("header\n" + good + "\n" + "1,2,3\n")
    with pytest.raises(UserError, match=r"bad\.csv line 3 has 3 values"):
        load_images(csv)


def test_empty_folder_one_image_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "empty"))):
        load_images(tmp_path / "empty")
    one = write_pngs(tmp_path / "one", random_images(0, 1))
    with pytest.raises(UserError, match=re.escape(str(one))):
        load_images(one)
    with pytest.raises(UserError, match="missing"):
        statistics_of_path(tmp_path / "missing")
    with pytest.raises(UserError, match="dims"):
        calculate_fid_given_paths(one, one, dims=768)


def test_mismatched_sizes_are_resized_with_warning(tmp_path):
    folder = write_pngs(tmp_path / "mixed", random_images(0, 2, size=32) + random_images(1, 1, size=20))
    with pytest.warns(UserWarning, match="resized"):
        images = load_images(folder, num_workers=2)
    assert images.shape == (3, 3, 32, 32)


# ----------------------------------------------------------------------------- CLI

def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_save_stats_then_fid_from_another_cwd(tmp_path):
    gt = write_pngs(tmp_path / "gt", random_images(0, 2))
    pred = write_pngs(tmp_path / "pred", random_images(1, 2, smooth=True))
    saved = run_cli("--gt-path", gt, "--save-stats", "gt.npz", "--device", "cpu", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "gt.npz").is_file()
    scored = run_cli("--predicted-path", pred, "--gt-path", "gt.npz", "--device", "cpu", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert float(scored.stdout.split("FID:")[1]) > 0


def test_cli_bad_path_is_one_line_error(tmp_path):
    result = run_cli("--predicted-path", "nowhere", "--gt-path", "gt.npz", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
