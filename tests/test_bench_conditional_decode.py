"""The conditional-decode benchmark compares like with like: the conditional model shares
the plain one's weights, its filled fusion does real work under a mask, and a quick run
gives one finite row per model."""
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
    cond_state = cond.state_dict()
    assert all(torch.equal(v, cond_state[k]) for k, v in plain.state_dict().items())
    with torch.no_grad():
        ref = plain.decode_indices(indices)
        nothing = torch.zeros(2, 1, 64, 64)
        holes = cond.decode_indices(indices, image, nothing)
        half = torch.ones(2, 1, 64, 64)
        half[..., 32:] = 0
        fused = cond.decode_indices(indices, image, half)
        other = cond.decode_indices(indices, torch.rand_like(image), nothing)
        for conv in cond.cond.fuse_holes or []:  # the hole guide's fusion acts in hole cells
            conv.weight.zero_(), conv.bias.zero_()
        alone = cond.decode_indices(indices, image, nothing)
    assert torch.equal(holes, other)  # an all-hole mask ignores the masked image
    torch.testing.assert_close(alone, ref, rtol=0, atol=1e-6)  # and the rest is the plain decoder
    assert (fused - ref).abs().max() > 1e-3


def test_quick_run_row():
    [row] = bench.run("cpu", quick=True, batch=2, names=[NAME])
    assert row.unit == "ms/image" and not row.higher and row.precision in ("fp32", "bf16")
    assert math.isfinite(row.ours) and row.ours > 0 and math.isfinite(row.baseline) and row.baseline > 0
    cfg = load_config(bench.CONFIGS / bench.MODELS[NAME])
    params, macs = count_branch(bench.models(cfg, bench.CONFIGS / bench.MODELS[NAME], "cpu")[1], 64)
    assert f"branch {params / 1e3:.0f}k params, {macs / 1e6:.0f}M MAC/image" in row.note
