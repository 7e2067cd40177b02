"""FID: Fréchet maths against scipy, the Inception preprocessing of each mode, statistics
files and their modes, loading errors, the CLI.

Inception runs are kept to a handful of small images (~0.1-0.3 s per image on CPU).
"""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from metrics.fid import (calculate_fid_given_paths, load_images, read_statistics,  # noqa: E402
                         save_statistics, statistics_of_path, write_statistics)
from metrics.frechet import (compute_statistics, frechet_distance, frechet_distance_sqrtm,  # noqa: E402
                             psd_factor, trace_sqrt_product)
from metrics.inception import (DEFAULT_MODE, MODES, inception_features, load_inception,  # noqa: E402
                               pil_bicubic, preprocess, tf_bilinear_weights)
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

def uint8_images(seed: int, n: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))


def test_default_mode_is_the_lab_graders():
    assert DEFAULT_MODE == "legacy_pytorch" and set(MODES) == {"legacy_pytorch", "legacy_tensorflow", "clean"}


@pytest.mark.parametrize("mode,white", [("legacy_pytorch", 1.0), ("legacy_tensorflow", 0.9921875),
                                        ("clean", 0.9921875)])
def test_preprocess_range_and_constant_images(mode, white):
    """legacy_pytorch scales 2x - 1 of [0, 1], (x - 127.5) / 127.5; the others (x - 128) / 128."""
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 64, 64)
    out = preprocess(x, mode)
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)  # the network's fast layout, no copy
    assert torch.all(out[0] == -1) and torch.allclose(out[1], torch.tensor(white), atol=1e-6)
    centre = 127.5 if mode == "legacy_pytorch" else 128
    grey = preprocess(torch.full((1, 3, 64, 64), 77, dtype=torch.uint8), mode)
    assert torch.allclose(grey, torch.tensor((77 - centre) / centre), atol=1e-6)


def test_legacy_pytorch_is_pytorch_fids_input_exactly():
    """pytorch-fid (the lab's grader): ToTensor's x / 255, F.interpolate(bilinear,
    align_corners=False), then 2x - 1; bit for bit, at any input size, 299 included."""
    for h, w in ((64, 64), (37, 90), (299, 299), (512, 400)):
        images = uint8_images(h + w, 2, h, w)
        x = images.float().div(255)  # torchvision's ToTensor
        expected = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        assert torch.equal(preprocess(images, "legacy_pytorch"), expected)
    assert torch.equal(preprocess(images), preprocess(images, "legacy_pytorch"))  # the default


def test_legacy_pytorch_uses_half_pixel_centres():
    """Output i samples input (i + 0.5) * n_in / n_out - 0.5 (clamped at 0), unlike TF1's
    i * n_in / n_out: on a horizontal ramp the two differ by the shift."""
    n_in, n_out = 5, 12
    ramp = torch.tensor([0, 60, 120, 180, 240], dtype=torch.uint8).view(1, 1, 1, n_in).expand(1, 3, n_in, n_in)
    src = ((torch.arange(n_out) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    row = (F.interpolate(ramp.float(), size=(n_out, n_out), mode="bilinear", align_corners=False)[0, 0, 0])
    assert torch.allclose(row, 60 * src, atol=1e-4)  # the definition, checked on torch itself
    ours = preprocess(ramp.contiguous(), "legacy_pytorch")[0, 0, 0]  # at 299 wide
    src299 = ((torch.arange(299) + 0.5) * n_in / 299 - 0.5).clamp(0, n_in - 1)
    assert torch.allclose(ours, (60 * src299) / 127.5 - 1, atol=1e-5)
    tf = preprocess(ramp.contiguous(), "legacy_tensorflow")[0, 0, 0]
    assert (tf * 128 + 128 - 60 * src299).abs().max() > 10  # TF1's grid is shifted


def test_legacy_tensorflow_is_the_tf1_weights():
    """legacy_tensorflow is this suite's former preprocessing: the TF1 weight matrices on
    both axes, then (x - 128) / 128; a 299 x 299 input is not resampled."""
    images = uint8_images(3, 2, 40, 64)
    x = images.float()
    expected = (tf_bilinear_weights(40, 299) @ x @ tf_bilinear_weights(64, 299).T - 128) / 128
    assert torch.equal(preprocess(images, "legacy_tensorflow"), expected)
    full = uint8_images(4, 1, 299, 299)
    assert torch.equal(preprocess(full, "legacy_tensorflow"), (full.float() - 128) / 128)


def test_clean_is_pil_bicubic_per_channel_in_float():
    """clean-fid's clean mode: each channel a float32 PIL image, bicubic to 299 x 299,
    clipped to [0, 255], then (x - 128) / 128."""
    images = uint8_images(5, 2, 48, 64)
    resized = pil_bicubic(images)
    channel = Image.fromarray(images[1, 2].numpy().astype(np.float32))  # mode "F"
    expected = np.asarray(channel.resize((299, 299), Image.Resampling.BICUBIC)).clip(0, 255)
    assert np.array_equal(resized[1, 2].numpy(), expected)
    assert resized.min() >= 0 and resized.max() <= 255  # bicubic overshoot is clipped
    assert torch.equal(preprocess(images, "clean"), (resized - 128) / 128)


def test_clean_antialiases_when_shrinking():
    """1-pixel stripes of 0 and 255 shrunk 2x average to grey with an antialiased filter;
    plain bilinear sampling (legacy_pytorch, at the centres of pixel pairs) is also grey, so
    take 2.5x, where point sampling hits the stripes and keeps most of their contrast."""
    stripes = torch.zeros(1, 3, 748, 748, dtype=torch.uint8)
    stripes[..., 1::2] = 255
    clean = pil_bicubic(stripes)[0, 0, 150, 10:-10]
    sampled = (preprocess(stripes, "legacy_pytorch")[0, 0, 150, 10:-10] + 1) * 127.5
    assert (clean - 127.5).abs().max() < 8
    assert (sampled - 127.5).abs().max() > 60


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="unknown FID mode 'pytorch'.*legacy_pytorch"):
        preprocess(uint8_images(0), "pytorch")


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
    with np.load(tmp_path / "a.npz") as data:
        assert str(data["mode"]) == DEFAULT_MODE
    cached = statistics_of_path(tmp_path / "a.npz")
    assert np.array_equal(mu, cached[0]) and np.array_equal(sigma, cached[1])
    assert calculate_fid_given_paths(a, tmp_path / "a.npz", device="cpu") == pytest.approx(0.0, abs=1e-3)
    assert calculate_fid_given_paths(b, tmp_path / "a.npz", device="cpu", batch_size=2) > 1.0


# ----------------------------------------------------------------------------- statistics files and modes

def fake_stats(tmp_path: Path, name: str, mode: str | None, seed: int = 0) -> Path:
    """An .npz of small made-up statistics (no Inception run), in `mode` (None: no mode key,
    as files written before modes existed, or by pytorch-fid)."""
    mu, sigma = compute_statistics(np.random.default_rng(seed).standard_normal((20, 2048)))
    path = tmp_path / name
    if mode is None:
        np.savez(path, mu=mu, sigma=sigma)
    else:
        write_statistics(path, mu, sigma, mode)
    return path


def test_statistics_round_trip_with_their_mode(tmp_path):
    path = fake_stats(tmp_path, "clean.npz", "clean")
    mu, sigma = read_statistics(path, "clean")
    with np.load(path) as data:
        assert str(data["mode"]) == "clean"
        assert np.array_equal(mu, data["mu"]) and np.array_equal(sigma, data["sigma"])
    assert calculate_fid_given_paths(path, path, mode="clean") == pytest.approx(0.0, abs=1e-6)


def test_mixed_modes_are_refused_in_one_line(tmp_path):
    tf = fake_stats(tmp_path, "tf.npz", "legacy_tensorflow")
    pt = fake_stats(tmp_path, "pt.npz", "legacy_pytorch", seed=1)
    for mode, wrong, stored in (("legacy_pytorch", tf, "legacy_tensorflow"),
                                ("legacy_tensorflow", pt, "legacy_pytorch")):
        with pytest.raises(UserError) as error:
            calculate_fid_given_paths(tf, pt, mode=mode)
        message = str(error.value)
        assert "\n" not in message and str(wrong) in message
        assert f"holds {stored} statistics, not {mode}" in message
        assert f"--save-stats --mode {mode}" in message
    with pytest.raises(UserError, match="holds legacy_tensorflow statistics"):
        statistics_of_path(tf)  # the default mode


def test_stats_without_a_mode_must_be_recomputed(tmp_path):
    old = fake_stats(tmp_path, "old.npz", None)
    for mode in MODES:  # its mode is unknown (ours were legacy_tensorflow, pytorch-fid's legacy_pytorch)
        with pytest.raises(UserError, match=re.escape(f"{old} does not record its FID mode")
                           + f".*recompute it with --save-stats --mode {mode}$"):
            read_statistics(old, mode)


def test_wrong_mode_fails_before_the_inception_run(tmp_path, monkeypatch):
    """A folder against an .npz of another mode: the .npz is read first, so the error
    comes before minutes of feature extraction."""
    import metrics.fid
    monkeypatch.setattr(metrics.fid, "statistics_of_images", lambda *a, **k: pytest.fail("ran Inception"))
    folder = write_pngs(tmp_path / "pred", random_images(0, 2))
    tf = fake_stats(tmp_path, "tf.npz", "legacy_tensorflow")
    with pytest.raises(UserError, match="holds legacy_tensorflow statistics"):
        calculate_fid_given_paths(folder, tf)


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
    assert float(scored.stdout.split("FID (legacy_pytorch):")[1]) > 0


def test_cli_names_the_mode_and_refuses_a_mixed_comparison(tmp_path):
    """Two .npz, so no Inception run: --mode picks the convention, the output names it, and
    statistics of another mode are a one-line error naming the file and the fix."""
    a = fake_stats(tmp_path, "a.npz", "legacy_tensorflow")
    b = fake_stats(tmp_path, "b.npz", "legacy_tensorflow", seed=1)
    scored = run_cli("--predicted-path", a, "--gt-path", b, "--mode", "legacy_tensorflow", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    line, = scored.stdout.splitlines()
    assert line.startswith("FID (legacy_tensorflow): ") and float(line.split(": ")[1]) > 0
    refused = run_cli("--predicted-path", a, "--gt-path", b, cwd=tmp_path)  # default legacy_pytorch
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().count("\n") == 0
    assert "a.npz" in refused.stderr and "--mode legacy_pytorch" in refused.stderr


def test_cli_bad_path_is_one_line_error(tmp_path):
    result = run_cli("--predicted-path", "nowhere", "--gt-path", "gt.npz", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
