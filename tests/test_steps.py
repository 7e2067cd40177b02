"""Recipes counted in steps: max_steps, the LR schedule and the GAN start are functions of
the step, and a run stopped by its time budget, then resumed, is the uninterrupted run."""
import math

import pytest
import torch

import training_transformer
import training_vqgan
from data import write_synthetic_folder
from models.VQGAN.losses import adopt_weight
from runtime.lr_schedule import lr_factor

from conftest import MASKGIT_TINY, VQ_TINY


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("step, expected", [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.55),
                                            (100, 0.1), (1000, 0.1)])
def test_lr_warms_up_then_decays_by_cosine(step, expected):
    # 10 warm-up steps, cosine from 1 to 0.1 over steps 10..100, constant after
    assert lr_factor(step, warmup=10, total=100, min_ratio=0.1) == pytest.approx(expected)


def test_lr_without_warmup_or_decay_is_constant():
    assert {lr_factor(s, 0, 50, 1.0) for s in range(0, 80, 7)} == {1.0}


@pytest.mark.parametrize("step, expected", [(0, 0.0), (99, 0.0), (100, 0.8), (10_000, 0.8)])
def test_gan_weight_starts_at_its_step(step, expected):
    assert adopt_weight(0.8, step, start=100) == expected


def vqgan_args(out, data, *extra):
    # 24 images in batches of 4: 6 steps per epoch; 9 steps end mid-epoch 1. The GAN starts
    # at step 3 and dead codes restart every 2 steps, so all of the loop's state is used.
    return ["--config", str(VQ_TINY), "--out", str(out), "--data", str(data), "--device", "cpu",
            "--batch-size", "4", "--max-steps", "9",
            "--set", "training.disc_start=3", "training.disc_weight=0.1", "training.restart_every=2",
            "training.warmup_steps=2", "training.min_lr_ratio=0.2", *extra]


def test_vqgan_max_steps_ends_mid_epoch_with_the_scheduled_lr(tmp_path):
    data = write_synthetic_folder(tmp_path / "data", 24)
    training_vqgan.main(vqgan_args(tmp_path / "run", data))
    ck = load(tmp_path / "run" / "last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (9, 1, 3)
    base = ck["config"]["training"]["learning_rate"]
    # the rate of the last step taken (step 8), for the autoencoder and the discriminator
    assert ck["opt_ae"]["param_groups"][0]["lr"] == pytest.approx(base * lr_factor(8, 2, 9, 0.2))
    assert ck["opt_d"]["param_groups"][0]["lr"] == ck["opt_ae"]["param_groups"][0]["lr"]
    assert ck["opt_d"]["state"], "the discriminator trained after disc_start"


def test_vqgan_keep_every_keeps_snapshots_that_are_prefixes_of_the_run(tmp_path):
    data = write_synthetic_folder(tmp_path / "data", 24)
    training_vqgan.main(vqgan_args(tmp_path / "run", data, "--keep-every", "4"))
    kept = sorted(p.name for p in (tmp_path / "run").glob("step_*.pt"))
    assert kept == ["step_000004.pt", "step_000008.pt"]
    snap = load(tmp_path / "run" / "step_000004.pt")
    assert (snap["step"], snap["epoch"], snap["batch_in_epoch"]) == (4, 0, 4)
    # the snapshot is where the run stood at step 4: resuming from it gives the full run
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "last.pt").write_bytes((tmp_path / "run" / "step_000004.pt").read_bytes())
    training_vqgan.main(vqgan_args(tmp_path / "cut", data, "--resume"))
    full, cut = load(tmp_path / "run" / "last.pt"), load(tmp_path / "cut" / "last.pt")
    assert same_weights(full["model"], cut["model"]) and same_weights(full["disc"], cut["disc"])


def test_vqgan_time_budget_then_resume_equals_the_uninterrupted_run(tmp_path, capsys):
    data = write_synthetic_folder(tmp_path / "data", 24)
    training_vqgan.main(vqgan_args(tmp_path / "full", data))
    # a budget of 6 ms has run out by the end of the first step
    training_vqgan.main(vqgan_args(tmp_path / "cut", data, "--time-budget", "0.0001"))
    said = capsys.readouterr().out
    assert "time budget reached after 1 of the recipe's 9 steps" in said
    assert "the result is not the recipe's" in said
    assert load(tmp_path / "cut" / "last.pt")["step"] == 1
    training_vqgan.main(vqgan_args(tmp_path / "cut", data, "--resume"))
    full, cut = load(tmp_path / "full" / "last.pt"), load(tmp_path / "cut" / "last.pt")
    assert cut["step"] == full["step"] == 9
    assert same_weights(full["model"], cut["model"]) and same_weights(full["disc"], cut["disc"])


def transformer_args(out, *extra):
    # 100 generated images in batches of 8: 12 steps per epoch; 17 steps end mid-epoch 1
    return ["--MaskGitConfig", str(MASKGIT_TINY), "--checkpoint-path", str(out),
            "--token-cache", str(out.parent / "cache"), "--partial", "0.05", "--batch-size", "8",
            "--max-steps", "17", "--device", "cpu", "--set", "train_param.warmup_steps=4",
            "model_param.Transformer_param.dropout=0.1", *extra]


def test_transformer_time_budget_then_resume_equals_the_uninterrupted_run(tmp_path, capsys):
    training_transformer.main(transformer_args(tmp_path / "full"))
    training_transformer.main(transformer_args(tmp_path / "cut", "--time-budget", "0.0001"))
    assert "time budget reached after 1 of the recipe's 17 steps" in capsys.readouterr().out
    training_transformer.main(transformer_args(tmp_path / "cut", "--resume"))
    full, cut = load(tmp_path / "full" / "last.pt"), load(tmp_path / "cut" / "last.pt")
    assert (full["step"], full["epoch"], full["batch_in_epoch"]) == (17, 1, 5)
    assert cut["step"] == 17 and same_weights(full["model"], cut["model"])
    # the schedule ran to the recipe's 17 steps, not to the end of an epoch
    tp = full["config"]["train_param"]
    assert full["scheduler"]["_last_lr"][0] == pytest.approx(
        tp["learning_rate"] * lr_factor(17, 4, 17, tp["min_lr_ratio"]))


def test_max_steps_must_not_be_negative(tmp_path):
    from utils import UserError
    with pytest.raises(UserError, match="max_steps = -1"):
        training_transformer.main(transformer_args(tmp_path / "x", "--max-steps", "-1"))
