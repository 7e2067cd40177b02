"""A bound on the caches of compiled CPU kernels, set once per process by every script.

oneDNN (torch's CPU backend for convolutions, bf16 matmuls and packed linears) compiles a
kernel ("primitive") per operator shape and keeps the last 1024 it made; ideep, torch's layer
over it, keeps 1024 more of its own. The masked tokens' logits change their row count at
every training and decoding step, and each new count adds kernels that hold their own
buffers. The cat-face recipe's stage 2 (bf16) peaked at 6.8 GiB RSS over its 3750 steps; one
bf16 linear of its logits' shape went from 0.6 to 5.7 GiB over 600 row counts, and to 1.6 GiB
with both caches at 256 (benchmarks/EXPERIMENTS.md). A stage-1 training step of the recipe
uses 78 distinct kernels, and the fixed-shape kernels run every step, so they stay among the
most recently used and keep being reused.
"""
from __future__ import annotations

import os

ENVS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's cache, ideep's
CAPACITY = 256


def bound_kernel_cache(capacity: int = CAPACITY) -> None:
    """Keep at most `capacity` kernels in each cache, unless the user's environment already
    says how many. Each cache reads its setting when the first kernel is compiled, so call
    this before the process computes anything (utils.run_cli does)."""
    for name in ENVS:
        os.environ.setdefault(name, str(capacity))
