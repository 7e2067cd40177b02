"""inpainting.py end to end on a tiny untrained MaskGit: the output layout, batch-size
independence, sweet spots, unconditional generation and compositing."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import maskgit_tiny_cfg
from data import MaskedImageDataset, make_masked_set, make_synthetic_images, normalization
from models.VQGAN_Transformer import MaskGit
from models.compositing import harmonic_fill, poisson_blend
from models.decoding import token_unknown_from_pixels
from runtime.checkpoints import save_checkpoint
from utils import UserError

import inpainting

N_IMAGES, T = 6, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_vq_ckpt):
    """A transformer checkpoint in our training format on a saved tiny VQGAN, and a masked set."""
    root = tmp_path_factory.mktemp("inpaint")
    cfg = maskgit_tiny_cfg(tiny_vq_ckpt)
    torch.manual_seed(0)
    model = MaskGit(cfg["model_param"])
    ckpt = root / "transformer.pt"
    save_checkpoint({"model": model.transformer.state_dict(), "config": cfg}, ckpt)
    masked = make_masked_set(make_synthetic_images(N_IMAGES, split="test"), root / "masked")
    return ckpt, masked


def run(setup, out, *flags):
    """fp32, where batching changes nothing (bf16 kernels may block by batch size)."""
    ckpt, masked = setup
    inpainting.main(["--load-transformer-ckpt-path", str(ckpt), "--device", "cpu",
                     "--test-maskedimage-path", str(masked / "masked_image"),
                     "--test-mask-path", str(masked / "mask64"), "--out", str(out),
                     "--total-iter", str(T), "--save-steps", "2", "--precision", "fp32", *flags])
    return out


def read_folder(folder) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def full(setup, tmp_path_factory):
    return run(setup, tmp_path_factory.mktemp("full"), "--batch-size", "3")


def test_output_layout(full):
    results = read_folder(full / "test_results")
    assert list(results) == [f"image_{i:03d}.png" for i in range(N_IMAGES)]
    assert all(a.shape == (64, 64, 3) and a.dtype == np.uint8 for a in results.values())
    masks, strips = read_folder(full / "mask_scheduling"), read_folder(full / "imga")
    assert list(masks) == list(strips) == ["image_000.png", "image_001.png"]
    for strip in strips.values():  # masked input, then one panel per step
        assert strip.shape == (64, 64 * (T + 1), 3)
    for m in masks.values():  # one panel per step, black = still masked, white = decided
        assert m.shape == (64, 64 * T, 3)
        assert set(np.unique(m)) <= {0, 255}
        assert (m[:, -64:] == 255).all()  # nothing is masked after the last step
    # the last imga panel is the final result
    assert np.array_equal(strips["image_000.png"][:, -64:], results["image_000.png"])


def test_batch_size_does_not_change_results(setup, full, tmp_path):
    one = run(setup, tmp_path, "--batch-size", "1")
    for folder in ["test_results", "imga", "mask_scheduling"]:
        a, b = read_folder(full / folder), read_folder(one / folder)
        assert list(a) == list(b)
        for name in a:
            # tokens are identical (mask_scheduling is exact; see the test below); the
            # decoder's convolutions may round differently per batch size, by one level
            diff = np.abs(a[name].astype(int) - b[name].astype(int))
            assert diff.max() <= (0 if folder == "mask_scheduling" else 1), (folder, name)
            assert (diff > 0).mean() < 1e-3, (folder, name)


def load_model_and_images(setup):
    ckpt, masked = setup
    model = inpainting.load_maskgit(ckpt)
    mean, std = normalization(model.vq_config, "test")
    ds = MaskedImageDataset(masked / "masked_image", masked / "mask64", 64, mean, std)
    images, known, _ = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    return model, images, known


def test_batched_tokens_equal_one_by_one(setup):
    model, images, known = load_model_and_images(setup)
    gens = inpainting.image_generators
    _, batched, _ = model.inpaint(images, known, T, gens(range(N_IMAGES), 0, "cpu"))
    for i in range(N_IMAGES):
        _, single, _ = model.inpaint(images[i:i + 1], known[i:i + 1], T, gens([i], 0, "cpu"))
        assert torch.equal(single[0], batched[i]), i


def test_sweet_spot(setup, full, tmp_path):
    early = run(setup, tmp_path, "--batch-size", "3", "--sweet-spot", "2")
    results = read_folder(early / "test_results")
    assert len(results) == N_IMAGES and len(list((early / "imga").iterdir())) == 2
    assert read_folder(early / "imga")["image_000.png"].shape == (64, 64 * 3, 3)  # 2 steps shown
    reference = read_folder(full / "test_results")
    assert any(not np.array_equal(results[k], reference[k]) for k in results)


def test_sweet_spot_history_length_in_library(setup):
    model, images, known = load_model_and_images(setup)
    gens = inpainting.image_generators(range(N_IMAGES), 0, "cpu")
    out, tokens, history = model.inpaint(images, known, T, gens, sweet_spot=2, record=True)
    assert len(history) == 2 and out.shape == (N_IMAGES, 3, 64, 64)
    assert (tokens < model.mask_token_id).all()


def test_generate(setup, tmp_path):
    run(setup, tmp_path, "--generate", "4", "--batch-size", "3")
    results = read_folder(tmp_path / "test_results")
    assert list(results) == [f"image_{i:03d}.png" for i in range(4)]
    assert all(a.shape == (64, 64, 3) for a in results.values())


@pytest.mark.parametrize("flags", [["--composite", "paste"], ["--composite"]])
def test_composite_keeps_known_pixels(setup, full, tmp_path, flags):
    _, masked = setup
    run(setup, tmp_path, *flags, "--batch-size", "3")
    inputs, masks = read_folder(masked / "masked_image"), read_folder(masked / "mask64")
    results, plain = read_folder(tmp_path / "test_results"), read_folder(full / "test_results")
    to01 = lambda a: torch.tensor(a).movedim(-1, 0)[None].float() / 255  # (1, 3, R, R)
    for i, name in enumerate(sorted(inputs)):
        known = masks[name] >= 128
        out, raw = results[f"image_{i:03d}.png"], plain[f"image_{i:03d}.png"]
        assert np.array_equal(out[known], inputs[name][known])
        # holes come from the same decoding as without --composite ...
        if flags == ["--composite", "paste"]:
            assert np.array_equal(out[~known], raw[~known])
        else:  # ... Poisson-blended (the default mode): off by the rounding of `raw` at most
            want = poisson_blend(to01(raw), to01(inputs[name]), torch.from_numpy(known)[None, None])
            assert np.abs(out.astype(int) - np.rint(want[0].movedim(0, -1).numpy() * 255)).max() <= 1
            assert not np.array_equal(out[~known], raw[~known])


def test_harmonic_fill_hides_the_paint_in_the_holes(setup):
    """With hole_fill harmonic the tokens do not depend on what the masked file paints into
    its holes; encoded as given (the lab's way) they do, since the encoder sees past a patch."""
    model, images, known = load_model_and_images(setup)
    noisy = torch.where(known.bool(), images, torch.rand_like(images) * 2 - 1)
    for fill in ("harmonic", "none"):
        model.set_token_rule(fill, 1.0, "test")
        a, b = model.masked_tokens(images, known), model.masked_tokens(noisy, known)
        assert torch.equal(a == model.mask_token_id, b == model.mask_token_id)
        assert torch.equal(a, b) == (fill == "harmonic"), fill


def test_min_known_keeps_the_filled_images_tokens(setup):
    """Kept tokens are the encoder's tokens of the harmonically filled image, [MASK] the rest;
    a lower min_known keeps a superset."""
    model, images, known = load_model_and_images(setup)
    _, own = model.encode_to_z(harmonic_fill(images, 1 - known.float()))
    masked = {}
    for m in (1.0, 0.5):
        model.set_token_rule("harmonic", m, "test")
        tokens = model.masked_tokens(images, known)
        unknown = token_unknown_from_pixels(known, 16, m)
        assert torch.equal(tokens, torch.where(unknown, model.mask_token_id, own)), m
        masked[m] = tokens == model.mask_token_id
    assert (masked[0.5] <= masked[1.0]).all() and masked[0.5].sum() < masked[1.0].sum()


def test_reencode_pass_encodes_the_blended_decode(setup):
    """A re-encode pass decodes the tokens of the masked image with its holes filled by the
    Poisson-blended decode: the paint in the holes never reaches it, and `inpaint` with
    reencode N returns the N-th pass of what it returns with 0."""
    model, images, known = load_model_and_images(setup)
    gens = inpainting.image_generators
    decoded, _, _ = model.inpaint(images, known, T, gens(range(N_IMAGES), 0, "cpu"))
    out, tokens = model.reencode_pass(decoded, images, known)
    _, want = model.encode_to_z(poisson_blend(decoded, images, known, pixel_range=None))
    assert tokens.shape == (N_IMAGES, 256) and torch.equal(tokens, want)
    torch.testing.assert_close(out, model.decode_tokens(want))
    noisy = torch.where(known.bool(), images, torch.rand_like(images) * 2 - 1)
    assert torch.equal(model.reencode_pass(decoded, noisy, known)[1], tokens)
    assert not torch.equal(tokens, model.encode_to_z(decoded)[1])  # the known pixels count

    model.set_token_rule(model.hole_fill, model.min_known, "test", reencode=2)
    again, final, _ = model.inpaint(images, known, T, gens(range(N_IMAGES), 0, "cpu"))
    second, second_tokens = model.reencode_pass(out, images, known)
    assert torch.equal(final, second_tokens)
    torch.testing.assert_close(again, second)


def test_token_rule_flags_override_the_checkpoints_config(setup, full, tmp_path):
    ckpt, _ = setup
    model = inpainting.load_maskgit(ckpt)
    assert (model.hole_fill, model.min_known) == ("harmonic", 0.5)  # MaskGit_tiny.yml's
    assert model.reencode == 0
    model = inpainting.load_maskgit(ckpt, hole_fill="none", min_known=1.0, reencode=2)
    assert (model.hole_fill, model.min_known, model.reencode) == ("none", 1.0, 2)
    # the lab's way re-predicts more tokens: the first step's picture has more still masked
    lab = run(setup, tmp_path, "--batch-size", "3", "--hole-fill", "none", "--min-known", "1")
    first = lambda out: np.asarray(Image.open(out / "mask_scheduling" / "image_000.png"))[:, :64]
    assert (first(lab) == 0).sum() > (first(full) == 0).sum()


def test_a_config_beside_a_checkpoint_that_carries_one_names_what_it_leaves_unused(
        setup, tmp_path, tiny_vq_ckpt, capsys):
    ckpt, _ = setup
    cfg = maskgit_tiny_cfg(tiny_vq_ckpt)
    same, other = tmp_path / "same.yml", tmp_path / "other.yml"
    same.write_text(yaml.safe_dump(cfg))
    cfg["model_param"]["reencode"] = 2
    cfg["model_param"]["Transformer_param"]["n_layers"] += 1
    cfg["model_param"]["VQ_Configs"]["VQ_CKPT_path"] = "elsewhere.pt"  # a path: not a setting
    other.write_text(yaml.safe_dump(cfg))
    inpainting.load_maskgit(ckpt, same)
    assert "note:" not in capsys.readouterr().out
    model = inpainting.load_maskgit(ckpt, other)
    assert model.reencode == 0  # the checkpoint's own config is what runs
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: {ckpt} carries its own config, which is used; these settings of {other} are "
        f"not: Transformer_param.n_layers, reencode (the decoding flags, e.g. --reencode, override it)")


@pytest.mark.parametrize("flags", [["--min-known", "0"], ["--min-known", "1.5"]])
def test_bad_token_rule(setup, tmp_path, flags):
    with pytest.raises(UserError, match="min_known"):
        run(setup, tmp_path, *flags)


@pytest.mark.parametrize("reencode", [-1, 1.5, True])
def test_bad_reencode_in_a_config(tiny_vq_ckpt, reencode):
    params = {**maskgit_tiny_cfg(tiny_vq_ckpt)["model_param"], "reencode": reencode}
    with pytest.raises(UserError, match="reencode"):
        MaskGit(params, where="cfg.yml")


def test_reencode_flag_reaches_the_output(setup, full, tmp_path):
    out = run(setup, tmp_path, "--batch-size", "3", "--reencode", "1")
    results, plain = read_folder(out / "test_results"), read_folder(full / "test_results")
    assert list(results) == list(plain)
    assert any(not np.array_equal(results[k], plain[k]) for k in results)


def test_bad_hole_fill_in_a_config(tiny_vq_ckpt):
    params = {**maskgit_tiny_cfg(tiny_vq_ckpt)["model_param"], "hole_fill": "telea"}
    with pytest.raises(UserError, match="hole_fill 'telea'"):
        MaskGit(params, where="cfg.yml")


@pytest.mark.parametrize("flags", [["--sweet-spot", "0"], ["--total-iter", "0"]])
def test_bad_schedule_flags(setup, tmp_path, flags):
    with pytest.raises(UserError):
        run(setup, tmp_path, *flags)
