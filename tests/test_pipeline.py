"""pipeline.py, experiments.py, report.py and the `python -m data.masks` CLI, end to end on
tiny generated runs in tmp_path (1 epoch per stage on 40 images, 8 test images)."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import experiments
import pipeline
from conftest import SCRIPT_ENV
from data import make_masked_set, write_synthetic_folder
from report import write_report
from utils import REPO_ROOT, UserError

TINY = ["--partial", "0.02", "--vqgan-epochs", "1", "--transformer-epochs", "1", "--num-test", "8",
        "--device", "cpu", "--save-steps", "2", "--examples", "4", "--total-iter", "4"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, pipeline.main(["--out", str(out)] + TINY)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_pipeline_writes_every_stage(demo):
    out, summary = demo
    for ckpt in ("vqgan/best.pt", "transformer/best.pt", "maskgit_config.yml", "gt_stats.npz"):
        assert (out / ckpt).is_file(), ckpt
    assert summary["transformer_ckpt"] == out / "transformer" / "best.pt"
    for sub in ("masked/masked_image", "masked/mask64", "masked/gt", "inpainting/test_results",
                "reconstructions"):
        assert len(files(out / sub)) == 8, sub
    assert files(out / "inpainting" / "imga") == ["image_000.png", "image_001.png"]
    with Image.open(out / "inpainting" / "imga" / "image_000.png") as im:
        assert im.size == (64 * 5, 64)  # masked input + 4 decoding steps

    fid, floor = summary["fid_inpainting"], summary["fid_reconstruction"]
    assert math.isfinite(fid) and fid > 0 and math.isfinite(floor) and floor > 0
    page = (out / "report.html").read_text()
    assert summary["report"] == out / "report.html"
    assert page.count("<img") == 4 * 3 + 2  # example rows x (masked, result, gt) + 2 step strips
    assert f"{fid:.4f}" in page and f"{floor:.4f}" in page
    md = (out / "results.md").read_text()
    assert f"| FID inpainting | {fid:.4f} |" in md and "(examples.png)" in md
    with Image.open(out / "examples.png") as im:
        assert im.size == (3 * 64, 4 * 64)


def test_pipeline_reuses_given_checkpoint_and_masked_set(demo, tmp_path):
    out, summary = demo
    again = pipeline.main(["--out", str(tmp_path), "--transformer-ckpt", str(summary["transformer_ckpt"]),
                           "--masked-dir", str(out / "masked"), "--composite", "paste"] + TINY)
    assert not (tmp_path / "vqgan").exists() and not (tmp_path / "transformer").exists()
    assert not (tmp_path / "masked").exists()
    # same model, masks and seed: the same images, hence the same FIDs
    assert again["fid_inpainting"] == pytest.approx(summary["fid_inpainting"], abs=1e-6)
    assert again["fid_reconstruction"] == pytest.approx(summary["fid_reconstruction"], abs=1e-6)
    assert summary["fid_inpainting_composite"] is None  # only with --composite
    for key in ("fid_inpainting_composite", "fid_reconstruction_composite"):
        assert math.isfinite(again[key]) and again[key] > 0
    # pasted = known pixels of the ground truth, the rest from the unpasted image
    for pasted, raw in (("test_results_paste", "inpainting/test_results"),
                        ("reconstructions_paste", "reconstructions")):
        assert len(files(tmp_path / pasted)) == 8
        for i, name in ((0, files(out / "masked" / "gt")[0]), (7, files(out / "masked" / "gt")[7])):
            known = np.asarray(Image.open(out / "masked" / "mask64" / name)) == 255
            got = np.asarray(Image.open(tmp_path / pasted / f"image_{i:03d}.png"))
            gt = np.asarray(Image.open(out / "masked" / "gt" / name))
            unpasted = np.asarray(Image.open(tmp_path / raw / f"image_{i:03d}.png"))
            assert np.array_equal(got[known], gt[known]) and np.array_equal(got[~known], unpasted[~known])


def test_pipeline_rejects_data_without_splits(tmp_path):
    with pytest.raises(UserError, match="train/ and val/"):
        pipeline.main(["--out", str(tmp_path / "o"), "--data", str(tmp_path)])


def test_experiments_sweep_is_reproducible(demo, tmp_path):
    out, summary = demo
    argv = ["--load-transformer-ckpt-path", str(summary["transformer_ckpt"]),
            "--masked-dir", str(out / "masked"), "--mask-funcs", "cosine", "linear",
            "--total-iters", "2", "3", "--sweet-spots", "-1", "3", "--seed", "0", "--device", "cpu"]
    rows = experiments.main(argv + ["--out", str(tmp_path / "a")])
    table = (tmp_path / "a" / "results.csv").read_text()
    parsed = list(csv.DictReader(table.splitlines()))
    assert [(r["mask_func"], r["total_iter"], r["sweet_spot"]) for r in parsed] == [
        ("cosine", "2", "-1"), ("cosine", "3", "-1"), ("linear", "2", "-1"), ("linear", "3", "-1")]
    assert all(math.isfinite(float(r["fid"])) for r in parsed) and len(rows) == 4
    md = (tmp_path / "a" / "results.md").read_text()
    choice = rows[3]["choice_temperature"]
    assert md.count("\n") == 2 + 4 and f"| linear | 3 | -1 | 1 | {choice:g} | {rows[3]['fid']:.4f} |" in md
    for png in ("fid_vs_iter.png", "decoding_cosine.png", "decoding_linear.png"):
        assert (tmp_path / "a" / png).stat().st_size > 0, png
    with Image.open(tmp_path / "a" / "decoding_cosine.png") as im:
        assert im.size == (64 * 4, 2 * 64)  # T = 3 steps after the input, images over masks

    experiments.main(argv + ["--out", str(tmp_path / "b")])
    assert (tmp_path / "b" / "results.csv").read_text() == table


def test_experiments_temperature_axis(demo, tmp_path):
    out, summary = demo
    rows = experiments.main(["--load-transformer-ckpt-path", str(summary["transformer_ckpt"]),
                             "--masked-dir", str(out / "masked"), "--mask-funcs", "cosine",
                             "--total-iters", "3", "--temperatures", "0", "1", "--choice-temperatures", "0",
                             "--device", "cpu", "--out", str(tmp_path)])
    assert [(r["temperature"], r["choice_temperature"]) for r in rows] == [(0, 0), (1, 0)]
    greedy, sampled = (sorted((tmp_path / name / "test_results").glob("*.png"))
                       for name in ("cosine_iter3_temp0_choice0", "cosine_iter3_temp1_choice0"))
    assert len(greedy) == len(sampled) == 8
    assert any(not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
               for a, b in zip(greedy, sampled))


def test_experiments_composite_keeps_known_pixels(demo, tmp_path):
    out, summary = demo
    rows = experiments.main(["--load-transformer-ckpt-path", str(summary["transformer_ckpt"]),
                             "--masked-dir", str(out / "masked"), "--mask-funcs", "cosine",
                             "--total-iters", "2", "--composite", "--device", "cpu",
                             "--out", str(tmp_path)])
    assert len(rows) == 1 and math.isfinite(rows[0]["fid"])
    masked = sorted((out / "masked" / "masked_image").glob("*.png"))
    masks = sorted((out / "masked" / "mask64").glob("*.png"))
    for i in (0, len(masked) - 1):
        known = np.asarray(Image.open(masks[i])) == 255
        result = np.asarray(Image.open(tmp_path / "cosine_iter2" / "test_results" / f"image_{i:03d}.png"))
        assert np.array_equal(result[known], np.asarray(Image.open(masked[i]).convert("RGB"))[known])


def test_bf16_quality_benchmark_runs_on_a_trained_model(demo, tmp_path):
    from benchmarks import bench_precision
    out, summary = demo
    rows = bench_precision.run(summary["transformer_ckpt"], out / "masked", tmp_path, "cpu", total_iter=2)
    assert [r.unit for r in rows] == ["FID", "FID", "images/s"]
    assert all(math.isfinite(r.ours) and math.isfinite(r.baseline) and r.ours > 0 for r in rows)
    for folder in ("fp32", "bf16"):
        assert len(files(tmp_path / folder / "test_results")) == 8
        assert len(files(tmp_path / f"{folder}_poisson")) == 8


def test_sweep_settings_skip_sweet_spots_past_the_end():
    got = experiments.sweep_settings(["cosine"], [3, 8], [-1, 5, 3, 5])
    assert [tuple(s) for s in got] == [("cosine", 3, -1, None, None), ("cosine", 8, -1, None, None),
                                       ("cosine", 8, 5, None, None), ("cosine", 8, 3, None, None)]
    assert [s.name for s in got] == ["cosine_iter3", "cosine_iter8", "cosine_iter8_sweet5",
                                     "cosine_iter8_sweet3"]
    temps = experiments.sweep_settings(["linear"], [4], [-1], [0, 0.5], [2.0])
    assert [s.name for s in temps] == ["linear_iter4_temp0_choice2", "linear_iter4_temp0.5_choice2"]
    with pytest.raises(UserError, match="--temperatures -1.0 = -1.0"):
        experiments.sweep_settings(["cosine"], [3], [-1], [-1.0])
    with pytest.raises(UserError, match="unknown mask function"):
        experiments.sweep_settings(["nope"], [3], [-1])
    with pytest.raises(UserError, match="sweet-spot"):
        experiments.sweep_settings(["cosine"], [3], [0])


def test_report_without_ground_truth_or_steps(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    page = write_report(tmp_path, {"FID inpainting": 12.345678, "floor": None}, {"seed": 0},
                        {"total": 3.0}, [(image, image, None)]).read_text()
    assert "12.3457" in page and "n/a" in page and page.count("<img") == 2
    assert "Iterative decoding" not in page
    with Image.open(tmp_path / "examples.png") as im:
        assert np.asarray(im)[0, -1].tolist() == [128, 128, 128]  # missing ground truth is grey


def test_masks_cli_writes_the_same_set_as_the_library(tmp_path):
    src = write_synthetic_folder(tmp_path / "src", 4, split="test")
    cmd = [sys.executable, "-m", "data.masks", "--src", str(src), "--out", str(tmp_path / "cli"),
           "--kind", "box", "--seed", "3", "--limit", "3"]
    subprocess.run(cmd, cwd=REPO_ROOT, env=SCRIPT_ENV, check=True, capture_output=True)
    make_masked_set(src, tmp_path / "lib", "box", seed=3, limit=3)
    for sub in ("masked_image", "mask64", "gt"):
        names = files(tmp_path / "cli" / sub)
        assert names == files(tmp_path / "lib" / sub) and len(names) == 3
        for n in names:
            assert (tmp_path / "cli" / sub / n).read_bytes() == (tmp_path / "lib" / sub / n).read_bytes()
    bad = subprocess.run(cmd[:4] + [str(tmp_path / "missing")] + cmd[5:], cwd=REPO_ROOT,
                         env=SCRIPT_ENV, capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr
