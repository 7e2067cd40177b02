"""The bound on the kernel caches (runtime/kernel_cache.py): every script sets it through
run_cli, a user's own setting wins, and oneDNN obeys it when set after `import torch`."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.kernel_cache import CAPACITY, ENVS
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]

# Convolutions of shapes A, B, then A again, with oneDNN reporting each kernel it creates
# as a cache hit or miss; the capacity comes from bound_kernel_cache after `import torch`.
PROBE = """
import sys
import torch
from runtime.kernel_cache import bound_kernel_cache
bound_kernel_cache(int(sys.argv[1]))
w = torch.randn(32, 16, 3, 3)
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
    for side in (16, 17, 16):
        torch.nn.functional.conv2d(torch.randn(4, 16, side, side), w)
"""


def test_run_cli_bounds_both_caches(monkeypatch):
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    run_cli(lambda argv: None, [])
    assert [os.environ[name] for name in ENVS] == [str(CAPACITY)] * 2


def test_the_users_own_setting_wins(monkeypatch):
    monkeypatch.setenv(ENVS[0], "7")
    monkeypatch.delenv(ENVS[1], raising=False)
    run_cli(lambda argv: None, [])
    assert [os.environ[name] for name in ENVS] == ["7", str(CAPACITY)]


def creations(capacity: int) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ENVS}
    out = subprocess.run([sys.executable, "-c", PROBE, str(capacity)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return [word for line in out.stdout.splitlines() for word in line.split(",")
            if word.startswith("create:cache_")]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_onednn_obeys_a_bound_set_after_import():
    kept = creations(CAPACITY)
    if not kept:
        pytest.skip("these convolutions do not run through oneDNN here")
    # shape A's kernels are found again when the cache keeps them, and made anew when it
    # keeps one kernel only
    assert "create:cache_hit" in kept
    evicted = creations(1)
    assert len(evicted) == len(kept)
    assert "create:cache_hit" not in evicted
