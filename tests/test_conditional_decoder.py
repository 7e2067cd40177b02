"""The mask-conditioned decoder (models/VQGAN/conditional.py, training_conditional.py, the
--conditional-vqgan flag): it starts as the plain decoder bit for bit, ignores the masked
image under an all-hole mask, leaves the lab's module tree alone, loads plain checkpoints
with the new keys named, round-trips, keeps the tokens while it trains, learns to keep the
known pixels in a tiny run (better than a plain decoder fine-tuned alike), resumes exactly,
and every CLI that takes it refuses a checkpoint that is not one in one line."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import experiments
import inpainting
import pipeline
import training_conditional
from conftest import REPO, VQ_TINY, maskgit_tiny_cfg
from data import make_masked_set, make_synthetic_images, write_synthetic_folder
from data.mask_mix import MaskMix, check_mix
from data.masks import HOLE_FRACTION
from data.sources import image_tensor
from models.VQGAN import VQGAN, build_vqgan
from models.VQGAN.losses import reconstruction_loss
from models.VQGAN.conditional import (PIXEL_GAIN, TOKEN_SIDE, count_branch, load_tokenizer_weights,
                                     scramble_partly_known, token_side_state)
from models.VQGAN_Transformer import MaskGit, load_vqgan
from runtime.checkpoints import load_checkpoint, save_checkpoint
from training_vqgan import train_step
from utils import UserError, load_config, run_cli

COMPACT = REPO / "configs" / "VQGAN_catface_compact.yml"
RECIPE = REPO / "configs" / "VQGAN_catface_conditional.yml"
MANIFEST = Path(__file__).parent / "vqgan_state_dict.tsv"
HALF = [0.5] * 3


def tiny_compact_cfg(**changes) -> dict:
    cfg = load_config(COMPACT)
    cfg.update({"num_codebook_vectors": 64, "channels": [16, 32], "enc_res_blocks": [0, 1],
                "dec_res_blocks": [1, 1], **changes})
    return cfg


CONFIGS = {"compact": tiny_compact_cfg, "lab": lambda **c: {**load_config(VQ_TINY), **c}}


def pair(kind: str, seed: int = 0, **branch):
    """(plain tokenizer, the same with the branch, loaded from the plain one's state_dict)."""
    torch.manual_seed(seed)
    plain = build_vqgan(CONFIGS[kind]()).eval()
    cond = build_vqgan(CONFIGS[kind](conditional=True, **branch)).eval()
    new = load_tokenizer_weights(cond, plain.state_dict(), "plain.pt", verbose=False)
    assert new and all(k.startswith("cond.") for k in new)
    return plain, cond


def randomise_fusion(vq, seed: int = 1):
    """Fusion weights away from zero, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*vq.cond.fuse, *(vq.cond.fuse_holes or [])]:
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g))


def inputs(n=3, seed=0):
    """Normalised images (n, 3, 64, 64), token ids (n, 256) and a random known mask."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1
    tokens = torch.randint(0, 64, (n, 256), generator=g)
    cells = (torch.rand(n, 1, 8, 8, generator=g) < 0.6).float()  # (n, 1, 8, 8), 8x8-pixel cells
    known = cells.repeat_interleave(8, -1).repeat_interleave(8, -2)  # (n, 1, 64, 64)
    return images, tokens, known


# ----------------------------------------------------------------------------- the branch

@pytest.mark.parametrize("branch", [{}, {"fuse_pixels": True}, {"hole_guide": True}, {"hole_residual": True}])
@pytest.mark.parametrize("kind", CONFIGS)
def test_at_init_the_output_is_the_plain_decoders_bit_for_bit(kind, branch):
    plain, cond = pair(kind, **branch)
    images, tokens, known = inputs()
    with torch.no_grad():
        want = plain.decode_indices(tokens)
        assert torch.equal(cond.decode_indices(tokens, images, known), want)
        assert torch.equal(cond.decode_indices(tokens), want)  # no mask: the decoder alone
        assert torch.equal(cond(images, known)[0], plain(images)[0])


@pytest.mark.parametrize("kind", CONFIGS)
def test_an_all_hole_mask_ignores_the_masked_image(kind):
    plain, cond = pair(kind)
    randomise_fusion(cond)
    images, tokens, known = inputs()
    other = torch.rand_like(images)
    nothing = torch.zeros_like(known)
    with torch.no_grad():
        out = cond.decode_indices(tokens, images, nothing)
        assert torch.equal(out, cond.decode_indices(tokens, other, nothing))
        assert torch.equal(out, plain.decode_indices(tokens))  # an ordinary decoder
        # hole pixels never matter, known ones do: the branch is live
        mixed = torch.where(known.bool(), images, other)
        live = cond.decode_indices(tokens, images, known)
        assert torch.equal(live, cond.decode_indices(tokens, mixed, known))
        assert not torch.equal(live, out)


@pytest.mark.parametrize("kind", CONFIGS)
def test_the_hole_guide_fuses_into_hole_cells_and_ignores_the_hole_paint(kind):
    plain, cond = pair(kind, hole_guide=True)
    randomise_fusion(cond)
    with torch.no_grad():
        for conv in cond.cond.fuse:  # the known cells' fusion off: what is left is V's
            conv.weight.zero_(), conv.bias.zero_()
    images, tokens, known = inputs()
    other = torch.rand_like(images)
    with torch.no_grad():
        # hole-free: no hole cell, so V never acts
        assert torch.equal(cond.decode_indices(tokens, images, torch.ones_like(known)),
                           plain.decode_indices(tokens))
        live = cond.decode_indices(tokens, images, known)
        assert torch.equal(live, cond.decode_indices(tokens, torch.where(known.bool(), images, other), known))
        # the hole cells read the known pixels through the fill
        swapped = torch.where(known.bool(), other, images)
        assert not torch.equal(live, cond.decode_indices(tokens, swapped, known))
        nothing = torch.zeros_like(known)
        assert torch.equal(cond.decode_indices(tokens, images, nothing),
                           cond.decode_indices(tokens, other, nothing))


@pytest.mark.parametrize("kind", CONFIGS)
def test_the_pixel_fusion_can_copy_the_known_pixels_and_leaves_the_holes(kind):
    """W_p = [-I, I] (stored divided by PIXEL_GAIN) gives the masked image's known pixels
    exactly, and the holes stay what the decoder makes without the pixel fusion."""
    _, cond = pair(kind, fuse_pixels=True)
    _, levels_only = pair(kind)
    randomise_fusion(cond), randomise_fusion(levels_only)
    levels_only.load_state_dict({k: v for k, v in cond.state_dict().items() if "pixels" not in k})
    images, tokens, known = inputs()
    copy = torch.cat([-torch.eye(3), torch.eye(3)], 1)[..., None, None] / PIXEL_GAIN  # (3, 6, 1, 1)
    with torch.no_grad():
        cond.cond.pixels.weight.copy_(copy)
        out = cond.decode_indices(tokens, images, known)
        want = levels_only.decode_indices(tokens, images, known)
    assert torch.allclose(out * known, images * known, atol=1e-5)
    assert torch.equal(out * (1 - known), want * (1 - known))
    assert not torch.allclose(want * known, images * known, atol=0.1)  # the copy is the fusion's


@pytest.mark.parametrize("kind", CONFIGS)
def test_the_hole_residual_adds_the_filled_mismatch_to_the_holes_only(kind):
    """V_p = [0, I] (stored divided by PIXEL_GAIN) adds to each hole pixel the pull-push fill
    of image - out from the known pixels, the correction of a Poisson blend with a pyramid
    membrane; the known pixels stay the decoder's, and an all-hole mask ignores the image."""
    from models.compositing import pyramid_fill
    _, cond = pair(kind, hole_residual=True)
    randomise_fusion(cond)
    _, levels_only = pair(kind)
    levels_only.load_state_dict({k: v for k, v in cond.state_dict().items() if "residual" not in k})
    images, tokens, known = inputs()
    take = torch.cat([torch.zeros(3, 3), torch.eye(3)], 1)[..., None, None] / PIXEL_GAIN  # (3, 6, 1, 1)
    with torch.no_grad():
        cond.cond.residual.weight.copy_(take)
        out = cond.decode_indices(tokens, images, known)
        before = levels_only.decode_indices(tokens, images, known)
        want = before + (1 - known) * pyramid_fill(images - before, known)
        assert torch.allclose(out, want, atol=1e-5)
        assert torch.equal(out * known, before * known)
        assert not torch.allclose(out, before, atol=1e-3)  # the holes did move
        nothing = torch.zeros_like(known)
        assert torch.equal(cond.decode_indices(tokens, images, nothing),
                           cond.decode_indices(tokens, torch.rand_like(images), nothing))


def partly_known_mask() -> tuple[torch.Tensor, torch.Tensor]:
    """known (1, 1, 64, 64) on a 16x16 grid of 4x4 cells, and which cells are partly known
    (256,): the left half known, the right half a hole, and one pixel of hole in each cell
    of row 2 (so its left-half cells are partly known)."""
    known = torch.zeros(1, 1, 64, 64)
    known[..., :32] = 1
    known[..., 8, 0:64:4] = 0
    partly = torch.zeros(16, 16, dtype=torch.bool)
    partly[2, :8] = True
    return known, partly.flatten()


def test_scrambling_draws_random_codes_in_partly_known_cells_only():
    known, partly = partly_known_mask()
    known = known.expand(400, -1, -1, -1)
    indices = torch.zeros(400, 256, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(scramble_partly_known(indices, known, 1024, 0.0, g), indices)
    every = scramble_partly_known(indices, known, 1024, 1.0, g)
    assert not (every != 0)[:, ~partly].any()        # known and hole cells keep their tokens
    assert (every != 0)[:, partly].float().mean() > 0.99  # 1/1024 of the draws hit code 0
    assert every.max() < 1024 and every.unique().numel() > 900  # uniform over the codebook
    half = (scramble_partly_known(indices, known, 1024, 0.5, g) != 0)[:, partly].float().mean()
    assert abs(half.item() - 0.5) < 0.03, half  # 3200 cells: sd 0.009


@pytest.mark.parametrize("kind", CONFIGS)
def test_token_noise_redecodes_scrambled_tokens_and_returns_the_encoders(kind):
    _, vq = pair(kind)
    randomise_fusion(vq)
    images, _, _ = inputs(2)
    known, _ = partly_known_mask()
    known = known.expand(2, -1, -1, -1)
    with torch.no_grad():
        clean, indices, _ = vq(images, known)
        torch.manual_seed(3)
        noisy, noisy_indices, _ = vq(images, known, 1.0)
        torch.manual_seed(3)  # the same draws, by hand
        by_hand = vq.decode_indices(scramble_partly_known(indices, known, vq.num_codebook_vectors, 1.0),
                                    images, known)
        everything = torch.ones_like(known)  # no partly known cell: nothing to scramble
        assert torch.allclose(vq(images, everything, 1.0)[0], vq(images, everything)[0], atol=1e-5)
    assert torch.equal(noisy_indices, indices)
    assert torch.allclose(noisy, by_hand, atol=1e-5) and not torch.allclose(noisy, clean, atol=1e-3)


def test_the_lab_module_tree_is_unchanged_and_the_branch_has_its_own_keys():
    manifest = [tuple(line.split("\t")) for line in MANIFEST.read_text().splitlines()]
    with torch.device("meta"):
        plain = VQGAN.from_config(load_config(REPO / "configs" / "VQGAN.yml"))
        cond = build_vqgan({**load_config(REPO / "configs" / "VQGAN.yml"), "conditional": True})
    shapes = lambda m: [(k, str(tuple(v.shape))) for k, v in m.state_dict().items()]
    assert shapes(plain) == manifest and len(manifest) == 315
    assert shapes(cond)[:315] == manifest  # the lab's keys, order and shapes, then the branch
    assert all(k.startswith("cond.") for k, _ in shapes(cond)[315:])
    assert plain.cond is None and sum(p.numel() for p in plain.parameters()) == 70_775_299


def test_the_branch_costs_what_a_flop_count_says():
    """The recipe's figures: 91,584 parameters and 43.0M multiply-adds per 64x64 image, on a
    713,484-parameter, 244.3M-MAC decoder."""
    vq = build_vqgan({**load_config(COMPACT), "conditional": True}).eval()
    z = vq.codebook.embed(torch.zeros(1, 256, dtype=torch.long), 16, 16)
    x, known = torch.zeros(1, 3, 64, 64), torch.ones(1, 1, 64, 64)
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        vq.decode(z)
    with torch.no_grad(), FlopCounterMode(display=False) as cond:
        vq.decode(z, x, known)
    params, macs = count_branch(vq, 64)
    assert (params, macs) == (91_584, 42_991_616)
    assert cond.get_total_flops() - plain.get_total_flops() == 2 * macs
    assert plain.get_total_flops() == 2 * 244_318_208
    assert sum(p.numel() for p in vq.decoder.parameters()) == 713_484
    # the pixel fusion: a 6 -> 3 1x1 conv at 64x64
    px = build_vqgan({**load_config(COMPACT), "conditional": True, "fuse_pixels": True}).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fused:
        px.decode(z, x, known)
    assert count_branch(px, 64) == (params + 21, macs + 18 * 64 * 64)
    assert fused.get_total_flops() - plain.get_total_flops() == 2 * (macs + 18 * 64 * 64)
    # the hole guide: the fusion convs once more (the pyramid fill only pools and interpolates)
    guided = build_vqgan({**load_config(COMPACT), "conditional": True, "hole_guide": True}).eval()
    fuse = sum(c.weight.numel() * (64 // f) ** 2 for (_, _, f), c in zip(guided.cond.levels, guided.cond.fuse))
    with torch.no_grad(), FlopCounterMode(display=False) as both:
        guided.decode(z, x, known)
    assert count_branch(guided, 64) == (params + sum(p.numel() for p in guided.cond.fuse.parameters()),
                                        macs + fuse)
    assert both.get_total_flops() - plain.get_total_flops() == 2 * (macs + fuse)
    # the hole residual: one more 6 -> 3 1x1 conv at 64x64 (its fill only pools and interpolates)
    res = build_vqgan({**load_config(COMPACT), "conditional": True, "hole_residual": True}).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as residual:
        res.decode(z, x, known)
    assert count_branch(res, 64) == (params + 21, macs + 18 * 64 * 64)
    assert residual.get_total_flops() - plain.get_total_flops() == 2 * (macs + 18 * 64 * 64)


# ----------------------------------------------------------------------------- state dicts

def test_a_plain_checkpoint_loads_into_a_conditional_model_and_names_the_new_keys(tmp_path, capsys):
    torch.manual_seed(0)
    plain = build_vqgan(tiny_compact_cfg())
    save_checkpoint({"model": plain.state_dict(), "config": tiny_compact_cfg()}, tmp_path / "plain.pt")
    (tmp_path / "cond.yml").write_text(yaml.safe_dump(tiny_compact_cfg(conditional=True)))
    vq, _ = load_vqgan(tmp_path / "cond.yml", tmp_path / "plain.pt")  # the file's config wins ...
    assert vq.cond is None
    state = load_checkpoint(tmp_path / "plain.pt")["model"]
    save_checkpoint(state, tmp_path / "plain_state.pt")  # ... so a bare state_dict goes in
    capsys.readouterr()
    vq, _ = load_vqgan(tmp_path / "cond.yml", tmp_path / "plain_state.pt")
    lines = capsys.readouterr().out.splitlines()
    new = [k for k in vq.state_dict() if k.startswith("cond.")]
    assert len(lines) == 1 and "plain_state.pt" in lines[0] and f"{len(new)} new" in lines[0]
    assert all(k in lines[0] for k in new)
    images, tokens, known = inputs()
    with torch.no_grad():
        assert torch.equal(vq.decode_indices(tokens, images, known), plain.eval().decode_indices(tokens))


def test_a_conditional_checkpoint_round_trips(tmp_path, capsys):
    _, cond = pair("compact")
    randomise_fusion(cond)
    save_checkpoint({"model": cond.state_dict(), "config": tiny_compact_cfg(conditional=True)},
                    tmp_path / "cond.pt")
    capsys.readouterr()
    back, cfg = load_vqgan(tmp_path / "nope.yml", tmp_path / "cond.pt")
    assert capsys.readouterr().out == ""  # nothing new to report
    assert cfg["conditional"] is True
    for k, v in cond.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    images, tokens, known = inputs()
    with torch.no_grad():
        want = cond.decode_indices(tokens, images, known)
        assert torch.equal(back.decode_indices(tokens, images, known), want)
    state = cond.state_dict()
    del state["cond.fuse.0.bias"]  # a branch with a key missing is a misfit, not a plain file
    save_checkpoint({"model": state, "config": tiny_compact_cfg(conditional=True)}, tmp_path / "torn.pt")
    with pytest.raises(UserError, match="missing cond.fuse.0.bias"):
        load_vqgan(tmp_path / "nope.yml", tmp_path / "torn.pt")


# ----------------------------------------------------------------------------- training masks

def test_the_mask_mix_draws_every_kind_reproducibly():
    mix = {"lab": 1, "box": 1, "outpaint": 1, "all_hole": 1, "hole_free": 1}
    torch.manual_seed(0)
    known = MaskMix(mix, 64, bank_size=8).sample(200)
    assert known.shape == (200, 1, 64, 64) and set(known.unique().tolist()) <= {0.0, 1.0}
    frac = 1 - known.mean(dim=(1, 2, 3))  # hole fraction per mask
    assert 25 < (frac == 1).sum() < 60 and 25 < (frac == 0).sum() < 60  # 1/5 each
    drawn = frac[(frac > 0) & (frac < 1)]
    assert drawn.min() >= HOLE_FRACTION[0] - 1e-6 and drawn.max() <= 0.5 + 1e-6  # outpaint up to 0.5
    torch.manual_seed(0)
    assert torch.equal(MaskMix(mix, 64, bank_size=8).sample(200), known)
    assert check_mix({"lab": 3, "all_hole": 1}) == {"lab": 0.75, "all_hole": 0.25}
    for bad, message in (({"wobbly": 1}, "unknown mask kind 'wobbly'"), ({"lab": -1}, "lab = -1"),
                         ({"lab": 0}, "sum to 0"), ({}, "must map")):
        with pytest.raises(UserError, match=message):
            check_mix(bad)


# ----------------------------------------------------------------------------- the hole weight

def test_the_hole_weight_scales_the_hole_pixels_terms():
    x = torch.zeros(1, 1, 2, 2)
    x_rec = torch.tensor([[[[1.0, 2.0], [2.0, 2.0]]]])  # error 1 in the hole, 2 elsewhere
    known = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    weight = known + 6 * (1 - known)
    # L1 (6 x 1 + 3 x 2) / 4 = 3; L2 (6 x 1 + 3 x 4) / 4 = 4.5
    assert reconstruction_loss(x, x_rec, 1.0, weight).item() == pytest.approx(3 + 4.5)
    assert reconstruction_loss(x, x_rec, 1.0, torch.ones_like(known)).item() == \
        reconstruction_loss(x, x_rec, 1.0).item() == pytest.approx(7 / 4 + 13 / 4)


def test_train_step_weighs_the_holes_by_hole_weight():
    _, vq = pair("compact")
    randomise_fusion(vq)
    images, _, known = inputs(2)
    with torch.no_grad():
        x_rec = vq(images, known)[0]
    expected = reconstruction_loss(images, x_rec, 1.0, known + 6 * (1 - known)).item()
    opt = torch.optim.SGD(vq.parameters(), lr=0.0)
    _, log = train_step(vq, None, vq.last_layer, opt, None, torch.amp.GradScaler("cpu", enabled=False),
                        images, 0.0, 1.0, "cpu", "fp32", known=known, hole_weight=6.0)
    assert log["rec"] == pytest.approx(expected, rel=1e-5)
    assert expected > reconstruction_loss(images, x_rec, 1.0).item()  # the holes count more


# ----------------------------------------------------------------------------- training

def recipe(tmp_path, name, steps, masks=None, fuse_pixels=False, hole_guide=False, hole_residual=False,
           **training) -> Path:
    r = load_config(RECIPE)
    r.update(mask_bank=16, val_images=16, fuse_pixels=fuse_pixels, hole_guide=hole_guide,
             hole_residual=hole_residual, **({"masks": masks} if masks else {}))
    r["training"].update({"max_steps": steps, "batch_size": 8, "warmup_steps": 5, "disc_start": 10 ** 9,
                          "precision": "fp32", "learning_rate": 5e-3, "token_noise": 0.0, "hole_weight": 1.0,
                          **training})
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(r))
    return path


def train(tmp_path, config, out, init, data, *extra):
    training_conditional.main(["--config", str(config), "--init", str(init), "--data", str(data["train"]),
                               "--val-data", str(data["val"]), "--out", str(out), "--device", "cpu", *extra])
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained tiny CompactVQGAN checkpoint (ours: it carries its config) and generated data."""
    root = tmp_path_factory.mktemp("conditional")
    torch.manual_seed(0)
    save_checkpoint({"model": build_vqgan(tiny_compact_cfg()).state_dict(), "config": tiny_compact_cfg()},
                    root / "vq.pt")
    data = {s: write_synthetic_folder(root / "data", n, split=s) for s, n in (("train", 128), ("val", 16))}
    return root, root / "vq.pt", data


@pytest.fixture(scope="module")
def runs(setup):
    """The recipe's mask mix, and a plain decoder fine-tuned alike (all-hole masks only: the
    branch then never sees a pixel), 120 steps each."""
    root, vq, data = setup
    mixed = train(root, recipe(root, "mixed", 120), root / "mixed", vq, data)
    plain = train(root, recipe(root, "plain", 120, masks={"all_hole": 1}), root / "plain", vq, data)
    return mixed, plain


def val_scores(run: Path, data, known: torch.Tensor) -> dict:
    vq, _ = load_vqgan("unused.yml", run / "last.pt")
    images = image_tensor(str(data["val"]), 64)
    return training_conditional.evaluate(vq, images, known.expand(len(images), -1, -1, -1), HALF, HALF, "cpu")


def test_training_keeps_the_tokens_and_trains_the_decoder_side(setup, runs):
    _, init, _ = setup
    start = load_checkpoint(init)["model"]
    ck = load_checkpoint(runs[0] / "last.pt")
    assert ck["step"] == 120 and ck["config"]["conditional"] is True and ck["config"]["init"] == str(init)
    tokens = token_side_state(build_vqgan(tiny_compact_cfg()))  # the key set
    assert tokens and all(torch.equal(ck["model"][k], start[k]) for k in tokens)  # bit for bit
    assert not torch.equal(ck["model"]["decoder.model.0.weight"], start["decoder.model.0.weight"])
    assert ck["model"]["cond.fuse.0.weight"].abs().max() > 0


def test_training_runs_on_a_plain_lab_style_state_dict(setup, tiny_vq_ckpt, tmp_path):
    """The lab's VQGAN.pt case: a plain state_dict built from --vqgan-config; only the decoder
    side moves, the token side stays bit for bit."""
    _, _, data = setup
    out = train(tmp_path, recipe(tmp_path, "lab", 3), tmp_path / "lab", tiny_vq_ckpt, data,
                "--vqgan-config", str(VQ_TINY))
    start, ck = load_checkpoint(tiny_vq_ckpt), load_checkpoint(out / "last.pt")
    assert ck["step"] == 3 and ck["config"]["conditional"] is True
    token_keys = [k for k in start if k.startswith(TOKEN_SIDE)]
    assert token_keys and all(torch.equal(ck["model"][k], start[k]) for k in token_keys)
    assert any(not torch.equal(ck["model"][k], start[k]) for k in start if k.startswith("decoder."))


def test_step_zero_logs_the_plain_decoder(runs):
    first = json.loads((runs[0] / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["val_psnr"] == first["val_psnr_all_hole"]  # output = plain


def test_a_hole_free_mask_gives_the_known_pixels_back(setup, runs):
    """120 steps from an untrained tokenizer: 24.5 dB against the plain decoder's 17.5 when written."""
    _, _, data = setup
    everything = torch.ones(1, 1, 64, 64)
    mixed, plain = (val_scores(run, data, everything)["val_psnr"] for run in runs)
    assert mixed > 22 and mixed > plain + 5, (mixed, plain)


def test_a_tiny_run_beats_the_plain_decoder_on_the_known_region(runs):
    """Lab-like val masks: 23.7 dB against 17.4 on the known pixels, 19.1 against 18.9 in the
    holes when written."""
    mixed, plain = (json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) for run in runs)
    assert mixed["val_psnr_known"] > plain["val_psnr_known"] + 4, (mixed, plain)
    assert mixed["val_psnr_hole"] > plain["val_psnr_hole"] - 1  # the holes lose nothing


def test_token_noise_teaches_the_decoder_to_keep_known_pixels_the_tokens_contradict(setup, runs):
    """The same 120 steps with every partly known cell's token scrambled: the known pixels
    under random tokens there (val_psnr_known_scrambled) come out better than the run on
    true tokens; 23.9 against 23.1 dB when written (and 24.0 against 23.7 on true tokens)."""
    root, vq, data = setup
    noisy = train(root, recipe(root, "noisy", 120, token_noise=1.0), root / "noisy", vq, data)
    clean, scrambled = (json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                        for run in (runs[0], noisy))
    assert scrambled["val_psnr_known_scrambled"] > clean["val_psnr_known_scrambled"] + 0.4, (clean, scrambled)


def test_the_pixel_fusion_learns_to_keep_the_known_pixels(setup, runs):
    """The same 120 steps with `fuse_pixels`: the known region far above the run without it,
    the holes no worse: 46.8 against 23.7 dB on the known pixels, 18.9 against 19.1 in the
    holes when written."""
    root, vq, data = setup
    px = train(root, recipe(root, "pixels", 120, fuse_pixels=True), root / "pixels", vq, data)
    levels, pixels = (json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                      for run in (runs[0], px))
    assert pixels["val_psnr_known"] > levels["val_psnr_known"] + 15, (levels, pixels)
    assert pixels["val_psnr_hole"] > levels["val_psnr_hole"] - 0.5, (levels, pixels)


def test_the_hole_guide_trains_and_round_trips(setup, runs):
    """The same 120 steps with `hole_guide`: its convs leave zero, the checkpoint carries
    them and loads back, and the holes gain over the run without it: 21.8 against 19.1 dB
    when written (the known pixels 25.0 against 23.7)."""
    root, vq, data = setup
    guided = train(root, recipe(root, "guided", 120, hole_guide=True), root / "guided", vq, data)
    ck = load_checkpoint(guided / "last.pt")
    assert ck["config"]["hole_guide"] is True
    assert any(k.startswith("cond.fuse_holes.") and v.abs().sum() > 0 for k, v in ck["model"].items())
    model, _ = load_vqgan("unused.yml", guided / "last.pt")
    assert model.cond.fuse_holes is not None
    levels, holes = (json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                     for run in (runs[0], guided))
    assert holes["val_psnr_hole"] > levels["val_psnr_hole"] + 1.5, (levels, holes)


def test_resume_gives_the_uninterrupted_run(setup):
    """12 steps, then --resume to 20, equals 20 at once (constant rate, the GAN on from step 6)."""
    root, vq, data = setup
    cfg = recipe(root, "resume", 20, batch_size=4, min_lr_ratio=1.0, warmup_steps=0, disc_start=6)
    whole = train(root, cfg, root / "whole", vq, data)
    train(root, cfg, root / "part", vq, data, "--max-steps", "12")
    part = train(root, cfg, root / "part", vq, data, "--resume")
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(part / "last.pt")
    assert a["step"] == b["step"] == 20
    for name in ("model", "disc"):
        for k, v in a[name].items():
            assert torch.equal(v, b[name][k]), (name, k)


# ----------------------------------------------------------------------------- inpainting with it

@pytest.fixture(scope="module")
def maskgit_files(tmp_path_factory, tiny_vq_ckpt):
    """A transformer checkpoint on the tiny VQGAN, a masked set, conditional VQGANs of that
    tokenizer (at init, and with live fusion) and of another one."""
    root = tmp_path_factory.mktemp("cond_inpaint")
    cfg = maskgit_tiny_cfg(tiny_vq_ckpt)
    torch.manual_seed(0)
    save_checkpoint({"model": MaskGit(cfg["model_param"]).transformer.state_dict(), "config": cfg},
                    root / "transformer.pt")
    masked = make_masked_set(make_synthetic_images(4, split="test"), root / "masked")
    cond_cfg = {**load_config(VQ_TINY), "conditional": True}

    def save(name, seed, tokenizer=None, live=True):
        torch.manual_seed(seed)
        vq = build_vqgan(cond_cfg)
        if tokenizer is not None:
            load_tokenizer_weights(vq, tokenizer, "plain", verbose=False)
        if live:
            randomise_fusion(vq, seed)
        save_checkpoint({"model": vq.state_dict(), "config": cond_cfg}, root / f"cond_{name}.pt")

    plain = load_checkpoint(tiny_vq_ckpt)
    save("init", 0, plain, live=False), save("live", 1, plain), save("other", 2)
    return root, masked


def inpaint(files, out, *flags):
    root, masked = files
    inpainting.main(["--load-transformer-ckpt-path", str(root / "transformer.pt"), "--device", "cpu",
                     "--test-maskedimage-path", str(masked / "masked_image"),
                     "--test-mask-path", str(masked / "mask64"), "--out", str(out), "--total-iter", "3",
                     "--save-steps", "2", "--precision", "fp32", *flags])
    return {d: {p.name: np.asarray(Image.open(p)) for p in sorted((out / d).iterdir())}
            for d in ("test_results", "plain_results", "imga") if (out / d).is_dir()}


def test_inpainting_decodes_through_the_conditional_decoder(maskgit_files, tmp_path):
    root, masked = maskgit_files
    plain = inpaint(maskgit_files, tmp_path / "plain")
    at_init = inpaint(maskgit_files, tmp_path / "init", "--conditional-vqgan", str(root / "cond_init.pt"))
    live = inpaint(maskgit_files, tmp_path / "live", "--conditional-vqgan", str(root / "cond_live.pt"))
    names = [f"image_{i:03d}.png" for i in range(4)]
    assert list(live["test_results"]) == list(live["plain_results"]) == names
    for name in names:  # the same tokens (seeded decoding); at init the same pixels too
        assert np.array_equal(at_init["test_results"][name], plain["test_results"][name])
        assert np.array_equal(live["plain_results"][name], plain["test_results"][name])
    assert any(not np.array_equal(live["test_results"][n], plain["test_results"][n]) for n in names)
    for name in live["imga"]:  # the step pictures come from the same decoder
        assert np.array_equal(live["imga"][name][:, -64:], live["test_results"][name])
    pasted = inpaint(maskgit_files, tmp_path / "pasted", "--conditional-vqgan", str(root / "cond_live.pt"),
                     "--composite", "paste")
    for i, name in enumerate(sorted(p.name for p in (masked / "mask64").iterdir())):
        known = np.asarray(Image.open(masked / "mask64" / name)) >= 128
        out, raw = pasted["test_results"][names[i]], live["test_results"][names[i]]
        assert np.array_equal(out[known], np.asarray(Image.open(masked / "masked_image" / name))[known])
        assert np.array_equal(out[~known], raw[~known])  # --composite on top of the conditional decode


def test_pipeline_page_shows_plain_conditional_and_poisson_side_by_side(maskgit_files, tmp_path):
    root, masked = maskgit_files
    summary = pipeline.main(["--out", str(tmp_path), "--transformer-ckpt", str(root / "transformer.pt"),
                             "--masked-dir", str(masked), "--conditional-vqgan", str(root / "cond_live.pt"),
                             "--device", "cpu", "--total-iter", "3", "--save-steps", "1", "--examples", "2"])
    for key in ("fid_inpainting", "fid_plain", "fid_plain_poisson", "fid_reconstruction_conditional"):
        assert summary[key] is not None and math.isfinite(summary[key]), key
    page = (tmp_path / "report.html").read_text()
    for column in ("plain decode", "conditional decode", "plain decode, Poisson-blended", "ground truth"):
        assert f"<th>{column}</th>" in page
    with Image.open(tmp_path / "examples.png") as grid:
        assert grid.size == (5 * 64, 2 * 64)


# ----------------------------------------------------------------------------- bad input

def one_line_error(main, args, capsys, needle):
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]


def test_the_conditional_flag_refuses_what_is_not_a_conditional_vqgan(maskgit_files, tiny_vq_ckpt,
                                                                       tmp_path, capsys):
    root, masked = maskgit_files
    common = ["--load-transformer-ckpt-path", root / "transformer.pt", "--device", "cpu",
              "--test-maskedimage-path", masked / "masked_image", "--test-mask-path", masked / "mask64",
              "--out", tmp_path / "out", "--total-iter", 2]
    for ckpt, needle in ((tiny_vq_ckpt, "holds no conditional decoder"), (root / "nope.pt", "nope.pt"),
                         (root / "cond_other.pt", "differ from the transformer's VQGAN")):
        one_line_error(inpainting.main, common + ["--conditional-vqgan", ckpt], capsys, needle)
    one_line_error(experiments.main, ["--load-transformer-ckpt-path", root / "transformer.pt",
                                      "--masked-dir", masked, "--out", tmp_path / "sweep", "--device", "cpu",
                                      "--conditional-vqgan", tiny_vq_ckpt], capsys, "holds no conditional")
    one_line_error(pipeline.main, ["--out", tmp_path / "pipe", "--device", "cpu",
                                   "--conditional-vqgan", tiny_vq_ckpt], capsys, "holds no conditional")
    assert not (tmp_path / "pipe" / "vqgan").exists()  # refused before any training


def test_training_conditional_bad_input_is_one_line_error(setup, tiny_vq_ckpt, tmp_path, capsys):
    root, vq, data = setup
    good = recipe(tmp_path, "good", 2)
    r = load_config(good)
    (tmp_path / "typo.yml").write_text(yaml.safe_dump({**r, "maks": {}}))
    (tmp_path / "kind.yml").write_text(yaml.safe_dump({**r, "masks": {"blob": 1}}))
    base = ["--data", data["train"], "--out", tmp_path / "out", "--device", "cpu"]
    cases = [(["--config", good], "no VQGAN to start from"),
             (["--config", good, "--init", tmp_path / "nope.pt"], "nope.pt"),
             (["--config", good, "--init", tiny_vq_ckpt], "pass --vqgan-config"),
             (["--config", good, "--init", tiny_vq_ckpt, "--vqgan-config", COMPACT], "does not fit"),
             (["--config", tmp_path / "typo.yml", "--init", vq], "unknown key(s) maks"),
             (["--config", tmp_path / "kind.yml", "--init", vq], "unknown mask kind 'blob'"),
             (["--config", good, "--init", vq, "--batch-size", 0], "training.batch_size = 0"),
             (["--config", good, "--init", vq, "--set", "training.hole_weight=-1"],
              "training.hole_weight = -1"),
             (["--config", good, "--init", vq, "--set", "training.token_noise=1.5"],
              "training.token_noise = 1.5"),
             (["--config", good, "--init", vq, "--set", "fuse_pixels=2"], "fuse_pixels = 2 must be true or false"),
             (["--config", good, "--init", vq, "--set", "hole_guide=yes please"],
              "hole_guide = 'yes please' must be true or false"),
             (["--config", good, "--init", vq, "--data", tmp_path / "nope"], "nope")]
    for flags, needle in cases:
        one_line_error(training_conditional.main, base + flags, capsys, needle)
