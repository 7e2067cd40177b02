"""Data parallel training under torchrun: set-up, collectives, the per-rank data order."""
from __future__ import annotations

import os
import sys

import torch

from .precision import resolve_device


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_flag: str | None) -> tuple[torch.device, int, int]:
    """Set up DDP when launched by torchrun (NCCL on CUDA, gloo on CPU).

    Returns (device, rank, world_size); a plain `python script.py` gives rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return resolve_device(device_flag), 0, 1
    import torch.distributed as dist
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_flag)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def cleanup_distributed() -> None:
    """Leave the process group; call it from a `finally`.

    After a run that ended without an exception, the ranks first meet at a barrier: this
    thread waits there without the GIL, so gloo's worker threads can release the tensors of
    the last collectives, which needs the GIL. Torch before 2.8 destroys a gloo group while
    holding the GIL, and a worker still releasing one waits for it forever: with torch 2.4.1,
    4 of 8 two-rank CPU runs hung at exit without the barrier, 0 of 12 with it. After an
    exception the other ranks may never reach a barrier, so there is none."""
    import torch.distributed as dist
    if is_distributed():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity when not distributed)."""
    import torch.distributed as dist
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def check_replicas_identical(*modules: torch.nn.Module) -> None:
    """Under DDP every rank must hold bit-identical weights (same start, same averaged
    gradients, same optimizer). A difference means a rank-local update slipped in, so
    stop before it reaches a checkpoint. Collective; a no-op in a single process."""
    import torch.distributed as dist
    if not is_distributed():
        return
    flat = torch.cat([p.detach().flatten().float() for m in modules for p in m.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if diff > 0:
        raise RuntimeError(f"DDP replicas diverged: max |w - w_rank0| = {diff.item():.3g}")


def epoch_order(n: int, epoch: int, seed: int, rank: int, world: int, batch_size: int,
                skip_batches: int = 0) -> list[list[int]]:
    """This rank's shuffled batches of indices for `epoch`, dropping the ragged end.

    The order depends only on (seed, epoch), as with a DistributedSampler, so a run
    resumed mid-epoch skips exactly the batches it already trained on. Rank r takes
    every world-th index of one permutation, so the union over ranks of batch i is
    permutation[i*W*b:(i+1)*W*b]: the same global batch for every world size W with
    the same W*b (2 processes x b train on exactly what 1 x 2b does).
    """
    from torch.utils.data import DistributedSampler
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = list(sampler)
    batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return batches[skip_batches:]
