"""Data-parallel training: the sampler's batch layout, replica equality, DDP == one process
on the same global batch, and mixed precision on CPU. Scripts run as subprocesses (2 gloo
ranks via torch.distributed.run), with tiny configs and an untrained VQGAN.

What is compared with what:
  (a) the transformer under 2 ranks: every checkpoint (here: every step) runs
      runtime.distributed.check_replicas_identical, which stops the run if any weight differs from rank 0's;
  (b) DDP 2 x b == 1 x 2b on the VQGAN trainer (GAN off, no code restarts): given the
      batch its step is deterministic, while the transformer draws masks from per-rank RNG
      streams that one process cannot reproduce.
"""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import run_script
from data import write_synthetic_folder
from runtime import distributed
from runtime.distributed import check_replicas_identical, cleanup_distributed, epoch_order

NO_DROPOUT = ["model_param.Transformer_param.attn_drop=0", "model_param.Transformer_param.dropout=0"]


def transformer_args(out, *extra):
    return ["--checkpoint-path", out, "--token-cache", out.parent / "cache", "--device", "cpu",
            "--epochs", 1, *extra, "--set", *NO_DROPOUT]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- batch layout

def test_global_batches_are_the_same_for_any_world_size():
    n, b = 37, 4
    one = epoch_order(n, epoch=3, seed=5, rank=0, world=1, batch_size=2 * b)
    r0, r1 = (epoch_order(n, 3, 5, rank, 2, b) for rank in (0, 1))
    assert len(one) == len(r0) == len(r1) == n // (2 * b)
    for single, a, c in zip(one, r0, r1):
        assert len(a) == len(c) == b and not set(a) & set(c)
        assert sorted(single) == sorted(a + c)


def test_epoch_order_is_deterministic_per_seed_and_epoch_and_skips_exactly():
    full = epoch_order(50, 1, 0, 1, 2, 4)
    assert full == epoch_order(50, 1, 0, 1, 2, 4)
    assert full != epoch_order(50, 2, 0, 1, 2, 4) and full != epoch_order(50, 1, 1, 1, 2, 4)
    assert epoch_order(50, 1, 0, 1, 2, 4, skip_batches=2) == full[2:]


# ----------------------------------------------------------------------------- replica check

def _replica_worker(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        check_replicas_identical(model)  # identical: passes
        if rank == 1:
            with torch.no_grad():
                model.bias[0] += 1e-6
        with pytest.raises(RuntimeError, match="replicas diverged"):  # on every rank
            check_replicas_identical(model)
    finally:
        cleanup_distributed()


def test_replica_check_detects_one_differing_weight(tmp_path):
    mp.spawn(_replica_worker, args=(str(tmp_path / "init"),), nprocs=2)


# ----------------------------------------------------------------------------- teardown

@pytest.mark.parametrize("fails", [False, True])
def test_teardown_meets_at_a_barrier_only_after_a_run_without_an_exception(monkeypatch, fails):
    calls = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    try:
        try:
            if fails:
                raise ValueError("a rank failed")
        finally:
            cleanup_distributed()
    except ValueError:
        pass
    # a failed rank must not wait for ranks that may never arrive
    assert calls == (["destroy"] if fails else ["barrier", "destroy"])


# ----------------------------------------------------------------------------- scripts under DDP

def test_transformer_ddp_keeps_replicas_identical_and_logs_once(tmp_path):
    out = tmp_path / "tr"
    result = run_script("training_transformer.py", *transformer_args(
        out, "--partial", 0.05, "--batch-size", 8, "--ckpt-interval", 1, "--ema-decay", 0.9), nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    # 100 images, global batch 16 -> 6 steps; the replica check ran at each of them
    assert result.stdout.count("effective batch 16 (2 proc x 8 x 1 accum)") == 1
    assert result.stdout.count("epoch 1: train loss") == 1
    ck = load(out / "last.pt")
    assert ck["step"] == 6 and ck["epoch"] == 1
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert any(not torch.equal(ck["ema"][k], v) for k, v in ck["model"].items())


def test_vqgan_ddp_equals_one_process_on_the_same_global_batch(tmp_path):
    data = write_synthetic_folder(tmp_path / "data", 32)
    common = ["--data", data, "--epochs", 1, "--device", "cpu",
              "--set", "training.restart_every=1000000"]  # GAN is off in the tiny config
    two = run_script("training_vqgan.py", "--out", tmp_path / "two", "--batch-size", 4, *common, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "effective batch 8 (2 x 4)" in two.stdout
    one = run_script("training_vqgan.py", "--out", tmp_path / "one", "--batch-size", 8, *common)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load(tmp_path / "one" / "last.pt"), load(tmp_path / "two" / "last.pt")
    assert a["step"] == b["step"] == 4
    # one Adam step moves a weight by ~lr = 2e-3, so a different batch order shows up as ~1e-3;
    # summation order alone gives ~1e-5
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert diff < 3e-4


@pytest.mark.parametrize("script,precision", [("training_transformer.py", "bf16"),
                                              ("training_transformer.py", "fp16"),
                                              ("training_vqgan.py", "fp16")])
def test_mixed_precision_runs_on_cpu(tmp_path, script, precision):
    out = tmp_path / "out"
    if script == "training_transformer.py":
        args = transformer_args(out, "--partial", 0.02, "--batch-size", 20)  # 40 images: 2 steps
    else:
        data = write_synthetic_folder(tmp_path / "data", 4)
        args = ["--out", out, "--data", data, "--batch-size", 4, "--epochs", 1, "--device", "cpu"]
    result = run_script(script, *args, "--precision", precision)
    assert result.returncode == 0, result.stderr[-3000:]
    ck = load(out / "last.pt")
    assert ck["config"]["train_param" if "transformer" in script else "training"]["precision"] == precision
    assert bool(ck["scaler"]) == (precision == "fp16")  # GradScaler only for fp16
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1
