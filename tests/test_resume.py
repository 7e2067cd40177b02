"""Crash-safe checkpoints and exact resume, through the scripts as subprocesses.

A run killed with SIGKILL mid-epoch and resumed with --resume ends with the same weights
as an uninterrupted run (dropout on, EMA on: RNG, optimizer, scheduler and EMA all come
back). Ctrl-C saves and exits 130; a NaN loss stops without touching the checkpoint.
"""
import hashlib
import shutil
import signal
import subprocess
import time

import pytest
import torch

from conftest import REPO, SCRIPT_ENV, run_script, script_cmd
from data import write_synthetic_folder
from inpainting import load_maskgit
from runtime.checkpoints import load_checkpoint, save_checkpoint
from utils import UserError

# 100 generated images, batch 8 -> 12 steps per epoch; dropout on, so resume must restore RNG
TRANSFORMER = ["--partial", 0.05, "--batch-size", 8, "--epochs", 2, "--device", "cpu",
               "--ema-decay", 0.9, "--set", "model_param.Transformer_param.dropout=0.1",
               "model_param.Transformer_param.attn_drop=0.1"]


def transformer_run(out, *extra):
    return ["training_transformer.py", "--checkpoint-path", out, "--token-cache",
            out.parent / "cache", *TRANSFORMER, *extra]


def vqgan_run(out, data, *extra):
    # restart_every 3 straddles the kill, so the dead-code counts must be checkpointed too
    return ["training_vqgan.py", "--out", out, "--data", data, "--batch-size", 4, "--epochs", 2,
            "--device", "cpu", "--set", "training.restart_every=3", *extra]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def kill_after_step(cmd_args, ckpt, min_step: int, sig=signal.SIGKILL, timeout: float = 120):
    """Start a training script, send `sig` once `ckpt` reports step >= min_step; return
    (completed process, step held by `ckpt` after the signal)."""
    proc = subprocess.Popen(script_cmd(*cmd_args), cwd=REPO, env=SCRIPT_ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while not (ckpt.exists() and load(ckpt)["step"] >= min_step):
            assert proc.poll() is None, f"finished before step {min_step}: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), load(ckpt)["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch transformer run keeping epoch_001.pt and epoch_002.pt."""
    out = tmp_path_factory.mktemp("reference") / "tr"
    result = run_script(*transformer_run(out, "--save-per-epoch", 1))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_checkpoint_holds_everything_needed_to_resume(reference):
    ck = load(reference / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "batch_in_epoch",
            "rng", "config"} <= ck.keys()
    assert (ck["epoch"], ck["step"], ck["batch_in_epoch"]) == (2, 24, 0)
    assert ck["config"]["model_param"]["Transformer_param"]["dropout"] == 0.1
    assert not list(reference.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_sigkill_mid_epoch_then_resume_is_exact(reference, tmp_path):
    out = tmp_path / "tr"
    killed, step = kill_after_step(transformer_run(out, "--ckpt-interval", 1), out / "last.pt", 5)
    assert killed.returncode == -signal.SIGKILL
    ck = load(out / "last.pt")
    assert 5 <= step < 24 and 12 * ck["epoch"] + ck["batch_in_epoch"] == step
    resumed = run_script(*transformer_run(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {ck['epoch']}, step {step}" in resumed.stdout
    a, b = load(reference / "last.pt"), load(out / "last.pt")
    assert b["step"] == 24
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["ema"], b["ema"])


def test_start_from_epoch_resumes_from_the_epoch_checkpoint(reference, tmp_path):
    out = tmp_path / "tr"
    out.mkdir()
    shutil.copy(reference / "epoch_001.pt", out)
    result = run_script(*transformer_run(out, "--start-from-epoch", 1))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "at epoch 1, step 12" in result.stdout
    assert_same_weights(load(reference / "epoch_002.pt")["model"], load(out / "last.pt")["model"])


def test_ctrl_c_saves_a_finished_step_and_exits_130(tmp_path):
    out = tmp_path / "tr"
    stopped, step = kill_after_step(transformer_run(out, "--ckpt-interval", 1), out / "last.pt", 3,
                                    sig=signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "SIGINT: stopping after this step" in stopped.stderr
    # 100 images in batches of 8 for 2 epochs: the recipe is 24 steps
    assert f"interrupted after {step} of the recipe's 24 steps: saved {out / 'last.pt'}" in stopped.stdout
    ck = load(out / "last.pt")  # the step count and the batch position agree (nothing half done)
    assert ck["batch_in_epoch"] == step - 12 * ck["epoch"] and ck["scheduler"]["last_epoch"] == step


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(reference, tmp_path):
    out = tmp_path / "tr"
    out.mkdir()
    shutil.copy(reference / "last.pt", out)
    before = hashlib.sha256((out / "last.pt").read_bytes()).hexdigest()
    result = run_script(*transformer_run(out, "--learning-rate", 1e30, "--ckpt-interval", 5))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "became nan at step" in lines[0] and "Traceback" not in result.stderr
    assert hashlib.sha256((out / "last.pt").read_bytes()).hexdigest() == before


def test_load_maskgit_evaluates_with_the_ema_weights(reference):
    ck = load(reference / "last.pt")
    model = load_maskgit(reference / "last.pt")
    assert_same_weights(model.transformer.state_dict(), ck["ema"])
    assert any(not torch.equal(ck["ema"][k], v) for k, v in ck["model"].items())


def test_vqgan_sigkill_then_resume_is_exact(tmp_path):
    data = write_synthetic_folder(tmp_path / "data", 8)  # 2 steps per epoch, 4 in all
    full = run_script(*vqgan_run(tmp_path / "full", data))
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "killed"
    killed, step = kill_after_step(vqgan_run(out, data, "--ckpt-interval", 1), out / "last.pt", 2)
    assert killed.returncode == -signal.SIGKILL and step < 4
    resumed = run_script(*vqgan_run(out, data, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step {step}" in resumed.stdout
    a, b = load(tmp_path / "full" / "last.pt"), load(out / "last.pt")
    assert a["step"] == b["step"] == 4
    assert_same_weights(a["model"], b["model"])


def test_save_checkpoint_is_atomic_when_the_write_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2, "x": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    path.write_bytes(path.read_bytes()[:20])  # a torn file from some other writer
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(path)
