"""The conditional-decode benchmark compares like with like: the conditional model shares
the plain one's weights (an all-hole mask decodes to the same pixels), its filled fusion
does real work under a lab mask, and a quick run gives one finite row per model."""
import math

import torch

from benchmarks import bench_conditional_decode as bench
from models.VQGAN.conditional import count_branch
from utils import load_config

NAME = "cat-face recipe (CompactVQGAN)"


def test_models_share_weights_and_the_branch_acts():
    config = bench.CONFIGS / bench.MODELS[NAME]
    cfg = load_config(config)
    plain, cond = bench.models(cfg, config, "cpu")
    r = cfg["latent_resolution"]
    indices = torch.randint(0, cfg["num_codebook_vectors"], (2, r * r), generator=torch.Generator().manual_seed(0))
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = plain.decode_indices(indices)
        holes = cond.decode_indices(indices, image, torch.zeros(2, 1, 64, 64))
        half = torch.ones(2, 1, 64, 64)
        half[..., 32:] = 0
        fused = cond.decode_indices(indices, image, half)
    torch.testing.assert_close(holes, ref, rtol=0, atol=1e-6)
    assert (fused - ref).abs().max() > 1e-3


def test_quick_run_row():
    [row] = bench.run("cpu", quick=True, batch=2, names=[NAME])
    assert row.unit == "ms/image" and not row.higher and row.precision in ("fp32", "bf16")
    assert math.isfinite(row.ours) and row.ours > 0 and math.isfinite(row.baseline) and row.baseline > 0
    cfg = load_config(bench.CONFIGS / bench.MODELS[NAME])
    params, macs = count_branch(bench.models(cfg, bench.CONFIGS / bench.MODELS[NAME], "cpu")[1], 64)
    assert f"branch {params / 1e3:.0f}k params, {macs / 1e6:.0f}M MAC/image" in row.note
