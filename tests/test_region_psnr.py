"""Region PSNR of an inpainted folder: exact known pixels give the 100 dB cap there, the holes'
PSNR is that of their pixels alone, and a folder of the wrong size is a one-line error."""
import math

import numpy as np
import pytest
from PIL import Image

from benchmarks.region_psnr import main as region_psnr
from utils import UserError


def write(folder, arrays, mode=None):
    folder.mkdir(parents=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode).save(folder / f"image_{i:03d}.png")
    return folder


@pytest.fixture
def masked_set(tmp_path):
    rng = np.random.default_rng(0)
    gt = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.full((16, 16), 255, np.uint8) for _ in range(2)]
    masks[0][:8] = 0    # top half a hole
    masks[1][:, :4] = 0  # a quarter a hole
    write(tmp_path / "masked" / "gt", gt)
    write(tmp_path / "masked" / "mask64", masks, "L")
    return tmp_path / "masked", gt, masks


def test_known_pixels_exact_holes_off_by_a_constant(masked_set, tmp_path):
    masked, gt, masks = masked_set
    # known pixels copied, every hole pixel 10 grey levels off: hole MSE (10/255)^2
    results = [np.where(m[..., None] >= 128, g, np.clip(g.astype(int) + 10, 0, 255)).astype(np.uint8)
               for g, m in zip(gt, masks)]
    out = write(tmp_path / "results", results)
    row = region_psnr(["--masked-dir", str(masked), "--results", str(out)])[str(out)]
    assert row["known"] == pytest.approx(100.0)
    hole_psnrs = []
    for g, r, m in zip(gt, results, masks):
        d = (r.astype(float) - g.astype(float))[m < 128] / 255
        hole_psnrs.append(10 * math.log10(1 / (d ** 2).mean()))
    assert row["hole"] == pytest.approx(sum(hole_psnrs) / 2, rel=1e-5)
    assert row["hole"] < row["whole"] < row["known"]


def test_a_folder_of_another_size_is_a_user_error(masked_set, tmp_path):
    masked, gt, _ = masked_set
    out = write(tmp_path / "results", [np.zeros((8, 8, 3), np.uint8)] * 2)
    with pytest.raises(UserError, match="pass the folder inpainted from this masked set"):
        region_psnr(["--masked-dir", str(masked), "--results", str(out)])
