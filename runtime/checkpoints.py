"""One atomic `save_checkpoint`, one safe `load_checkpoint`, and strict weight loading
with a one-line error: used by every script."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from utils import UserError, ensure_writable_dir


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
