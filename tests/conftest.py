"""Shared fixtures: the repository on sys.path and tiny model configs with absolute paths,
so tests pass from any working directory."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.VQGAN import VQGAN  # noqa: E402
from runtime.checkpoints import save_checkpoint  # noqa: E402
from utils import load_config  # noqa: E402

VQ_TINY = REPO / "configs" / "VQGAN_tiny.yml"
MASKGIT_TINY = REPO / "configs" / "MaskGit_tiny.yml"


@pytest.fixture
def vq_tiny_cfg() -> dict:
    return load_config(VQ_TINY)


def maskgit_tiny_cfg(vq_ckpt=None) -> dict:
    """The whole MaskGit_tiny.yml with the VQGAN config path made absolute."""
    cfg = load_config(MASKGIT_TINY)
    cfg["model_param"]["VQ_Configs"] = {"VQ_config_path": str(VQ_TINY),
                                        "VQ_CKPT_path": None if vq_ckpt is None else str(vq_ckpt)}
    return cfg


@pytest.fixture(scope="session")
def tiny_vq_ckpt(tmp_path_factory) -> Path:
    """A seeded, untrained tiny VQGAN saved as a plain state_dict (the lab's VQGAN.pt style),
    so every MaskGit built on it has the same tokenizer."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vq") / "VQGAN_tiny.pt"
    save_checkpoint(VQGAN.from_config(load_config(VQ_TINY)).state_dict(), path)
    return path


# ----------------------------------------------------------------------------- scripts as subprocesses

SCRIPT_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_cmd(script: str, *args, nproc: int = 1) -> list[str]:
    """Command line for a repository script; nproc > 1 launches it with torchrun on a free port."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                     f"--master_port={free_port()}"]
    return launcher + [str(REPO / script), *map(str, args)]


def run_script(script: str, *args, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a script as a user would (cwd = the repository, one CPU thread per process)."""
    return subprocess.run(script_cmd(script, *args, nproc=nproc), cwd=REPO, env=SCRIPT_ENV,
                          capture_output=True, text=True, timeout=timeout)
