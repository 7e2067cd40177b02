"""Seeding, and every RNG state a training loop touches, for exact resume."""
from __future__ import annotations

import random

import numpy as np
import torch

from .distributed import is_distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a training loop touches, for exact resume."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array travels as a tensor: weights_only loading refuses ndarrays
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states() -> list[dict]:
    """Every rank's `rng_state()`, in rank order (collective under DDP): each rank
    draws its own masks and dropout, so exact resume needs all of them."""
    if not is_distributed():
        return [rng_state()]
    import torch.distributed as dist
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng(states: list[dict] | dict, rank: int, world: int) -> bool:
    """Set this rank's RNGs from a checkpoint's `all_rng_states()`. Returns False, leaving
    the fresh seeds, when the checkpoint was written with another number of processes."""
    states = states if isinstance(states, list) else [states]  # older checkpoints: one dict
    if len(states) != world:
        return False
    set_rng_state(states[rank])
    return True
