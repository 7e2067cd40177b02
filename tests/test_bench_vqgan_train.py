"""The stage-1 training benchmark: its FLOP counter against hand counts, and a quick run."""
import math

import torch
import torch.nn as nn

from benchmarks import bench_vqgan_train
from benchmarks.bench_vqgan_train import forward_flops


def test_forward_flops_counts_convolutions_and_linears():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.Flatten(), nn.Linear(8 * 5 * 5, 10))
    x = torch.randn(2, 3, 5, 5)
    conv1 = 2 * (2 * 8 * 5 * 5) * 3 * 9
    conv2 = 2 * (2 * 8 * 5 * 5) * 2 * 9  # 8 / 4 groups = 2 input channels per output
    linear = 2 * (2 * 10) * 200
    assert forward_flops(net, x) == conv1 + conv2 + linear


def test_quick_run_compares_both_recipes():
    rows = bench_vqgan_train.run("cpu", quick=True)
    assert rows[0].name == "VQGAN train step, old recipe (VQGAN_catface, fp32)" and rows[0].ratio == 1.0
    assert rows[1].name.startswith("VQGAN train step, new recipe (VQGAN_catface_compact, ")
    for r in rows:
        assert r.unit == "images/s" and math.isfinite(r.ours) and r.ours > 0 and r.ratio > 0
        assert "GFLOP/s" in r.note and "GFLOP/image" in r.note
    assert rows[0].precision == "fp32" and all(r.precision in ("fp32", "bf16", "fp16") for r in rows)
