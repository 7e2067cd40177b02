"""Stage 2 training: the MaskGIT masking rule, the weighted loss, and a tiny run whose
validation loss falls and whose checkpoints hold everything a resume needs."""
import json
import math

import pytest
import torch

from conftest import MASKGIT_TINY, VQ_TINY, maskgit_tiny_cfg
from models.VQGAN_Transformer import MaskGit
from runtime.checkpoints import load_checkpoint
from runtime.precision import fused_attention
from utils import UserError

import training_transformer


@pytest.fixture
def maskgit():
    torch.manual_seed(0)
    return MaskGit(maskgit_tiny_cfg()["model_param"])


def transformer_inputs(model):
    """Record what the transformer is fed (the masked token ids)."""
    seen = []
    model.transformer.tok_emb.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    return seen


def test_maskgit_masking_counts_follow_gamma(maskgit):
    k, n, b = maskgit.mask_token_id, maskgit.num_image_tokens, 16
    indices = torch.randint(0, k, (b, n), generator=torch.Generator().manual_seed(1))
    seen = transformer_inputs(maskgit)
    with torch.no_grad():
        logits, target, counted = maskgit(indices, "maskgit",
                                          generator=torch.Generator().manual_seed(5))
    r = torch.rand(b, generator=torch.Generator().manual_seed(5))  # the same first draw
    expected = [min(n, max(1, math.ceil(maskgit.gamma(float(ri)) * n))) for ri in r]
    assert counted.sum(-1).tolist() == expected
    assert len(set(expected)) > 1  # each sample draws its own ratio
    fed = seen[-1]
    assert torch.equal(fed == k, counted)  # the loss covers exactly the masked tokens
    assert torch.equal(fed[~counted], indices[~counted])
    # logits at the counted tokens only, row-major, equal to the full forward's there
    assert logits.shape == (sum(expected), k + 1) and torch.equal(target, indices[counted])
    with torch.no_grad():
        full = maskgit.transformer(fed)
    torch.testing.assert_close(logits, full[counted], atol=1e-5, rtol=1e-5)


def test_maskgit_masking_stays_inside_region(maskgit):
    k, n, b = maskgit.mask_token_id, maskgit.num_image_tokens, 16
    indices = torch.randint(0, k, (b, n), generator=torch.Generator().manual_seed(1))
    region = torch.rand(b, n, generator=torch.Generator().manual_seed(2)) < 0.3
    region[0] = False  # an empty region masks nothing
    with torch.no_grad():
        _, _, masked = maskgit(indices, "maskgit", generator=torch.Generator().manual_seed(5),
                               region=region)
    assert not masked[~region].any()
    r = torch.rand(b, generator=torch.Generator().manual_seed(5))
    size = region.sum(-1).tolist()
    expected = [min(m, max(1, math.ceil(maskgit.gamma(float(ri)) * m))) for ri, m in zip(r, size)]
    assert masked.sum(-1).tolist() == expected and expected[0] == 0
    # the full region is the default masking, draw for draw
    with torch.no_grad():
        _, _, full = maskgit(indices, "maskgit", generator=torch.Generator().manual_seed(5),
                             region=torch.ones(b, n, dtype=torch.bool))
        _, _, default = maskgit(indices, "maskgit", generator=torch.Generator().manual_seed(5))
    assert torch.equal(full, default)


def test_hole_regions_cover_lab_holes():
    holes = training_transformer.hole_regions(64, 64, 16, seed=0)
    assert holes.shape == (64, 256) and holes.dtype == torch.bool
    frac = holes.float().mean(-1)
    # 10-30 % of the pixels lie in a hole; every 4x4 patch touching one counts as unknown
    assert (frac > 0.10).all() and (frac < 0.75).all()
    assert torch.equal(holes, training_transformer.hole_regions(64, 64, 16, seed=0))
    assert not torch.equal(holes, training_transformer.hole_regions(64, 64, 16, seed=1))


def test_bernoulli_masking_weights_every_token(maskgit):
    k, n = maskgit.mask_token_id, maskgit.num_image_tokens
    indices = torch.randint(0, k, (8, n), generator=torch.Generator().manual_seed(2))
    seen = transformer_inputs(maskgit)
    with torch.no_grad():
        logits, target, counted = maskgit(indices, "bernoulli",
                                          generator=torch.Generator().manual_seed(3))
    assert counted.all() and logits.shape == (8 * n, k + 1) and torch.equal(target, indices.flatten())
    with torch.no_grad():
        torch.testing.assert_close(logits, maskgit.transformer(seen[-1]).flatten(0, 1))
    assert 0.4 < (seen[-1] == k).float().mean() < 0.6


def test_unknown_masking_is_user_error(maskgit):
    with pytest.raises(UserError, match="bernoulli"):
        maskgit(torch.zeros(1, maskgit.num_image_tokens, dtype=torch.long), "random")


def test_loss_is_mean_over_counted_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 7, generator=g)
    target = torch.randint(0, 6, (8,), generator=g)
    manual = -(logits.log_softmax(-1)[torch.arange(8), target]).mean()
    torch.testing.assert_close(MaskGit.loss(logits, target), manual)
    torch.testing.assert_close(MaskGit.loss(logits.bfloat16(), target),  # computed in fp32
                               -(logits.bfloat16().float().log_softmax(-1)[torch.arange(8), target]).mean())
    smooth = MaskGit.loss(logits, target, 0.1)
    torch.testing.assert_close(smooth, 0.9 * manual - 0.1 * logits.log_softmax(-1).mean())
    empty = MaskGit.loss(torch.zeros(0, 7, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0  # an empty batch of masked tokens: 0, not nan


def test_maskgit_rejects_mismatched_vocab():
    cfg = maskgit_tiny_cfg()["model_param"]
    cfg["num_codebook_vectors"] = cfg["Transformer_param"]["num_codebook_vectors"] = 128
    with pytest.raises(UserError, match="codes"):
        MaskGit(cfg)


def test_tiny_training_run(tmp_path):
    out, cache = tmp_path / "ck", tmp_path / "cache"
    training_transformer.main([
        "--MaskGitConfig", str(MASKGIT_TINY), "--checkpoint-path", str(out),
        "--token-cache", str(cache), "--epochs", "3", "--partial", "0.05", "--batch-size", "8",
        "--set", f"model_param.VQ_Configs.VQ_config_path={VQ_TINY}", "train_param.warmup_steps=5"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"], metrics
    assert metrics[0]["val_loss"] < math.log(65)  # below a uniform guess over 64 codes + [MASK]
    assert not cache.exists() or not any(cache.iterdir())  # untrained VQGAN: tokens not cached
    for name in ["last.pt", "best.pt"]:
        ck = load_checkpoint(out / name)  # weights_only loading must accept it
        assert {"model", "optimizer", "scheduler", "config", "rng"} <= set(ck)
        assert ck["config"]["model_param"]["Transformer_param"]["dim"] == 64
        assert "tok_emb.weight" in ck["model"]
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_tiny_training_run_with_hole_masking(tmp_path):
    out = tmp_path / "ck"
    training_transformer.main([
        "--MaskGitConfig", str(MASKGIT_TINY), "--checkpoint-path", str(out),
        "--token-cache", str(tmp_path / "cache"), "--epochs", "2", "--partial", "0.05",
        "--batch-size", "8", "--hole-masking", "0.5",
        "--set", f"model_param.VQ_Configs.VQ_config_path={VQ_TINY}", "train_param.warmup_steps=5"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < math.log(65)
    assert load_checkpoint(out / "last.pt")["config"]["train_param"]["hole_masking"] == 0.5


@pytest.mark.parametrize("flags, message", [(["--hole-masking", "1.5"], r"\[0, 1\]"),
                                            (["--hole-masking", "0.5", "--masking", "bernoulli"],
                                             "needs masking: maskgit")])
def test_hole_masking_bad_values_are_user_errors(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        training_transformer.main([
            "--MaskGitConfig", str(MASKGIT_TINY), "--checkpoint-path", str(tmp_path / "ck"),
            "--token-cache", str(tmp_path / "cache"), "--partial", "0.05", *flags,
            "--set", f"model_param.VQ_Configs.VQ_config_path={VQ_TINY}"])


@pytest.mark.parametrize("precision, attn_drop, fused", [("fp32", 0.0, True), ("fp32", 0.1, False),
                                                         ("bf16", 0.0, False)])
def test_training_takes_the_attention_kernels_of_the_policy(tmp_path, monkeypatch, precision,
                                                            attn_drop, fused):
    """The config asks for the hand-written attention; on CPU the trainer takes the fused
    kernel where it trains faster (fp32 without attention dropout) and only there, and for
    the validation the kernel the policy picks for inference at the run's precision."""
    from models.Transformer.attention import MultiHeadAttention
    kernels, forward = set(), MultiHeadAttention.forward
    monkeypatch.setattr(MultiHeadAttention, "forward",
                        lambda self, x: kernels.add((self.training, self.fused)) or forward(self, x))
    training_transformer.main([
        "--MaskGitConfig", str(MASKGIT_TINY), "--checkpoint-path", str(tmp_path / "ck"),
        "--token-cache", str(tmp_path / "cache"), "--partial", "0.05", "--batch-size", "8",
        "--max-steps", "2", "--precision", precision, "--device", "cpu",
        "--set", f"model_param.VQ_Configs.VQ_config_path={VQ_TINY}",
        "model_param.Transformer_param.fused_attention=false",
        f"model_param.Transformer_param.attn_drop={attn_drop}"])
    assert kernels == {(True, fused), (False, fused_attention("cpu", precision, False))}
    assert (tmp_path / "ck" / "last.pt").exists()


def test_validation_runs_at_the_runs_precision(maskgit):
    """The bf16 validation is autocast (its loss differs from fp32's) and close to the fp32 one;
    each is repeatable, since the masks come from a fixed seed."""
    tokens = torch.randint(0, maskgit.transformer.mask_token_id, (1, 12, 256),
                           generator=torch.Generator().manual_seed(0))
    tp = {"masking": "maskgit"}
    fp32 = [training_transformer.validation_loss(maskgit, tokens, tp, "cpu", 8, "fp32")
            for _ in range(2)]
    bf16 = training_transformer.validation_loss(maskgit, tokens, tp, "cpu", 8, "bf16")
    assert fp32[0] == fp32[1]
    assert bf16 != fp32[0] and abs(bf16 - fp32[0]) < 0.02 * fp32[0]
