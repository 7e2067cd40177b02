"""benchmarks/tokenizer_quality.py: rFID, PSNR and usage per checkpoint, sorted by step, and
with a masked set the floors of inpainting's outputs: a plain checkpoint's reconstructions
Poisson-blended, and a conditional checkpoint's own decode given the known pixels."""
import math

import pytest
import torch
from PIL import Image

from benchmarks import tokenizer_quality
from data import make_masked_set, make_synthetic_images
from models.VQGAN import build_vqgan
from models.VQGAN.conditional import load_tokenizer_weights
from runtime.checkpoints import save_checkpoint
from test_conditional_decoder import tiny_compact_cfg
from utils import UserError


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A plain tiny CompactVQGAN at step 7, the same with a fresh (zero-fusion) conditional
    branch at step 3, and a 6-image lab-masked set."""
    root = tmp_path_factory.mktemp("tokq")
    torch.manual_seed(0)
    plain = build_vqgan(tiny_compact_cfg())
    save_checkpoint({"model": plain.state_dict(), "config": tiny_compact_cfg(), "step": 7}, root / "plain.pt")
    cond = build_vqgan(tiny_compact_cfg(conditional=True))
    load_tokenizer_weights(cond, plain.state_dict(), "plain.pt", verbose=False)
    save_checkpoint({"model": cond.state_dict(), "config": tiny_compact_cfg(conditional=True), "step": 3},
                    root / "cond.pt")
    masked = make_masked_set(make_synthetic_images(6, 64, seed=0, split="val"), root / "masked")
    return root, masked


def test_rows_are_sorted_by_step_and_score_each_floor(ckpts):
    root, masked = ckpts
    rows = tokenizer_quality.main(["--ckpts", str(root / "plain.pt"), str(root / "cond.pt"),
                                   "--masked-dir", str(masked), "--out", str(root / "out"),
                                   "--device", "cpu"])
    cond, plain = rows
    assert (cond["step"], plain["step"]) == (3, 7)
    assert plain["rfid_conditional"] is None and cond["rfid_poisson"] is None
    # at zero fusion the conditional decode is the plain one, bit for bit: the same FIDs
    assert cond["rfid"] == pytest.approx(plain["rfid"], abs=1e-6)
    assert cond["rfid_conditional"] == pytest.approx(plain["rfid"], abs=1e-6)
    # an untrained decoder: putting 70-90% of the true pixels back must help
    assert math.isfinite(plain["rfid_poisson"]) and plain["rfid_poisson"] < plain["rfid"]
    assert 0 < plain["usage"] <= 1 and math.isfinite(plain["psnr"])
    assert not any((root / "out").glob("rec*")), "the reconstruction folders are removed"
    with Image.open(root / "out" / "curve.png") as im:  # two steps: the curve against them
        assert im.size == (720, 480)


def test_one_checkpoint_draws_no_curve(ckpts, tmp_path):
    root, masked = ckpts
    rows = tokenizer_quality.run([root / "plain.pt"], None, 6, tmp_path, "cpu", masked)
    assert [r["step"] for r in rows] == [7] and not (tmp_path / "curve.png").exists()


def test_a_masked_set_with_missing_masks_is_refused(ckpts, tmp_path):
    root, masked = ckpts
    short = make_masked_set(make_synthetic_images(3, 64, seed=1, split="val"), tmp_path / "m")
    (short / "mask64" / sorted(p.name for p in (short / "mask64").iterdir())[0]).unlink()
    with pytest.raises(UserError, match="2 masks for 3 ground-truth images"):
        tokenizer_quality.run([root / "plain.pt"], None, 747, tmp_path / "out", "cpu", short)
