"""Shared plumbing for every script: user-facing errors, YAML configs with CLI
overrides, devices and precision, seeding, atomic checkpoints, EMA and the
distributed (torchrun) set-up.

Scripts stay thin: they parse flags, call `load_config`, build models, run one
loop, and hand every failure a user can fix to `UserError`, which `run_cli`
prints as one line with a non-zero exit code.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


# ----------------------------------------------------------------------------- errors

class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad file). Printed as one line."""


def run_cli(main, argv=None) -> None:
    """Run `main(argv)`; turn a UserError into `error: <message>` and exit code 2,
    and Ctrl-C into one line and exit code 130 (the shell's convention for SIGINT)."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` (and parents) and check we can write there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {path} ({e.strerror}); "
                        f"choose a writable folder") from None
    return path


# ----------------------------------------------------------------------------- configs

class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-4, 5E3): plain YAML
    1.1 turns them into strings, and a learning rate "1e-4" would crash the optimizer."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.subkey=value")
    key, value = text.split("=", 1)
    return key.split("."), yaml.load(value, Loader=_YamlLoader)


def apply_overrides(cfg: dict, overrides: list[str] | None, where: str = "config") -> dict:
    """Return a copy of `cfg` with `a.b=value` overrides applied (values parsed as YAML).

    An override may only replace a key that exists, so a typo is an error, not a
    silently ignored setting.
    """
    cfg = copy.deepcopy(cfg)
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = cfg
        for i, k in enumerate(keys):
            if not isinstance(node, dict) or k not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
                raise UserError(f"unknown config key '{'.'.join(keys[:i + 1])}' in {where}; "
                                f"known keys here: {known}")
            if i == len(keys) - 1:
                node[k] = value
            else:
                node = node[k]
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML config and apply CLI overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing YAML file (see configs/)")
    try:
        cfg = yaml.load(path.read_text(), Loader=_YamlLoader)
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return apply_overrides(cfg, overrides, where=str(path))


def require_keys(cfg: dict, keys: list[str], where: str) -> None:
    """Raise a UserError naming the first missing key of a config section."""
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise UserError(f"config {where} is missing key(s) {', '.join(missing)}; "
                        f"add them (see configs/ for complete examples)")


REPO_ROOT = Path(__file__).resolve().parent


def check_positive(values: dict, where: str | None = None, strict: bool = True) -> None:
    """Raise a UserError naming the first of `values` (name -> value) that is not a number
    > 0 (`strict`) or >= 0."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 if strict else v >= 0):
            origin = f" (from {where} or its flag)" if where else ""
            raise UserError(f"{name} = {v!r}{origin} must be a number {'>' if strict else '>='} 0")


def resolve_path(path: str | Path, base: str | Path = REPO_ROOT) -> Path:
    """A relative path in a config means the current folder when it exists there, else
    `base` (the repository root), so the shipped configs work from any working directory."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else Path(base) / path


# ----------------------------------------------------------------------------- devices

def resolve_device(name: str | None) -> torch.device:
    """`None`/'auto' -> CUDA when present, else CPU. Asking for absent CUDA is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was requested but this machine has no CUDA; "
                        f"use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device '{name}'; use cpu, cuda or cuda:N") from None


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` in {fp32, bf16, fp16}; fp32 is a no-op."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    if not _distributed():
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


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Write `obj` with torch.save to a temporary file, fsync, then rename atomically.

    A crash at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; checkpoints are shared like any output
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with `weights_only=True` (no arbitrary pickle)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; check the path or train one first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}); "
                        f"it may be truncated or not a PyTorch file") from None


def load_weights(model: torch.nn.Module, state: dict, source: str | Path) -> None:
    """`load_state_dict(strict=True)` with a one-line error listing the first differences."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if problems:
        shown = "; ".join(problems[:3])
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"checkpoint {source} does not fit the config: {shown}{more}; "
                        f"use the config the checkpoint was trained with")
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module):
        """Temporarily load the averaged weights into `model` (for evaluation)."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(backup)


# ----------------------------------------------------------------------------- distributed

def _distributed() -> bool:
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
    import torch.distributed as dist
    if _distributed():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity when not distributed)."""
    import torch.distributed as dist
    if _distributed():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def check_replicas_identical(*modules: torch.nn.Module) -> None:
    """Under DDP every rank must hold bit-identical weights (same start, same averaged
    gradients, same optimizer). A difference means a rank-local update slipped in, so
    stop before it reaches a checkpoint. Collective; a no-op in a single process."""
    import torch.distributed as dist
    if not _distributed():
        return
    flat = torch.cat([p.detach().flatten().float() for m in modules for p in m.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if diff > 0:
        raise RuntimeError(f"DDP replicas diverged: max |w - w_rank0| = {diff.item():.3g}")


# ----------------------------------------------------------------------------- training helpers

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


def check_finite(value: torch.Tensor, step: int, ckpt_dir, what: str = "loss") -> None:
    """Stop on a NaN/inf `what` before it reaches a checkpoint. Under DDP the check sees
    the mean over ranks, so every rank stops together (a NaN anywhere makes it NaN)."""
    value = all_reduce_mean(value.detach().float())
    if not torch.isfinite(value).all():
        raise UserError(f"{what} became {value.item()} at step {step}; the last good checkpoint "
                        f"in {ckpt_dir} is kept; lower the learning rate or use --precision fp32")


class GracefulStop:
    """Turns Ctrl-C (SIGINT), SIGTERM (e.g. cluster pre-emption) and the end of a time
    budget into a request that the training loop honours between steps, so the
    checkpoint it then writes holds a finished step, never a half-applied one. Another
    signal over a second later aborts at once; sooner, it is the same Ctrl-C again
    (torchrun forwards the terminal's SIGINT to workers that already got it).
    """

    def __init__(self, device: torch.device, time_budget_minutes: float = 0.0):
        self.device, self.signal, self._since = device, None, 0.0
        self._deadline = time.time() + 60 * time_budget_minutes if time_budget_minutes else math.inf
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal, self._since = signum, time.monotonic()
            print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort "
                  f"without saving)", file=sys.stderr)
        elif time.monotonic() - self._since > 1.0:
            raise KeyboardInterrupt

    def requested(self) -> bool:
        """True once a signal arrived or the budget ran out on any rank: under DDP all ranks
        must leave the loop at the same step, or the others would wait forever (collective)."""
        flag = torch.tensor(float(self.signal is not None or time.time() > self._deadline),
                            device=self.device)
        if _distributed():
            import torch.distributed as dist
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_step(self, step: int, ckpt_interval: int, save_last) -> bool:
        """Between two steps: whether to leave the loop now. `save_last()` (which writes
        last.pt) runs first when so, and every `ckpt_interval` steps (0 = never)."""
        stopping = self.requested()
        if stopping or (ckpt_interval and step % ckpt_interval == 0):
            save_last()
        return stopping

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def finish(self, stopped: bool, checkpoint: Path, step: int, verbose: bool) -> None:
        """After the loop: say why it stopped early. A signal ends the process with the
        shell's code for it (130 for Ctrl-C, 143 for SIGTERM); a spent budget returns."""
        if not stopped:
            return
        if verbose:
            why = "time budget reached" if self.signal is None else "interrupted"
            print(f"{why}: saved {checkpoint} at step {step}; continue with --resume")
        if self.signal is not None:
            sys.exit(128 + self.signal)


class RunLogger:
    """Appends metrics as JSON lines next to the checkpoints and, when asked, to wandb.

    wandb runs offline unless the user has logged in (WANDB_API_KEY or WANDB_MODE set).
    """

    def __init__(self, out_dir, use_wandb: bool, config: dict, name: str, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.wandb = None
        if enabled and use_wandb:
            import wandb
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY")
                                                    else "offline")
            self.wandb = wandb.init(project="maskgit-inpainting", name=name, config=config,
                                    dir=str(out_dir), mode=mode)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
