"""data/: masks, image loading, datasets and the synthetic set. Fixtures are generated in tmp_path."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from data import (IMAGE_EXTENSIONS, ImageFolderDataset, MaskedImageDataset, apply_mask, box_mask,
                  denormalize, get_mask_generator, lab_mask, list_images, load_rgb,
                  make_masked_set, make_synthetic_images, normalize, outpaint_mask, to_uint8,
                  write_synthetic_folder)
from utils import UserError

MEAN, STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def save(path, array, mode=None):
    Image.fromarray(array, mode).save(path)
    return path


def rand_images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("gen", [lab_mask, box_mask, outpaint_mask])
def test_mask_values_shape_dtype(gen):
    m = gen(np.random.default_rng(0), 64)
    assert m.shape == (64, 64) and m.dtype == np.uint8
    assert set(np.unique(m)) == {0, 255}


@pytest.mark.parametrize("gen", [lab_mask, box_mask])
def test_hole_fraction_in_range(gen):
    fracs = [(gen(np.random.default_rng([7, i]), 64) == 0).mean() for i in range(200)]
    assert 0.10 <= min(fracs) and max(fracs) <= 0.30
    assert max(fracs) - min(fracs) > 0.1  # the target varies, not one fixed size


def test_outpaint_border_hole_centre_known():
    for i in range(50):
        m = outpaint_mask(np.random.default_rng(i), 64)
        assert 0.25 <= (m == 0).mean() <= 0.5
        assert (m[0] == 0).all() and (m[-1] == 0).all() and (m[:, 0] == 0).all() and (m[:, -1] == 0).all()
        assert (m[16:48, 16:48] == 255).all()


@pytest.mark.parametrize("kind", ["lab", "box", "outpaint"])
def test_mask_seeding(kind):
    gen = get_mask_generator(kind)
    a, b = gen(np.random.default_rng([3, 1]), 64), gen(np.random.default_rng([3, 1]), 64)
    assert np.array_equal(a, b)
    others = [gen(np.random.default_rng([3, i]), 64) for i in range(2, 12)]
    assert any(not np.array_equal(a, o) for o in others)


def test_unknown_mask_kind():
    with pytest.raises(UserError, match="lab, box, outpaint"):
        get_mask_generator("stars")


def test_apply_mask_paints_holes_only():
    image = rand_images(1)[0]
    mask = lab_mask(np.random.default_rng(0), 64)
    out = apply_mask(image, mask)
    assert (out[mask == 0] == 128).all()
    assert np.array_equal(out[mask == 255], image[mask == 255])
    assert out is not image


# ----------------------------------------------------------------------------- masked sets

def make_dirs(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "k").mkdir()


def test_make_masked_set_from_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, im in enumerate(rand_images(5, size=80)):
        save(src / f"img{i}.{'png' if i % 2 else 'jpg'}", im)
    out = make_masked_set(src, tmp_path / "out", kind="box", seed=1)
    names = [f"img{i}.png" for i in range(5)]
    for d in ("masked_image", "mask64", "gt"):
        assert sorted(p.name for p in (out / d).iterdir()) == names
    for name in names:
        mask = Image.open(out / "mask64" / name)
        assert mask.mode == "L" and mask.size == (64, 64)
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        masked, gt = np.asarray(Image.open(out / "masked_image" / name)), np.asarray(Image.open(out / "gt" / name))
        assert np.array_equal(masked, apply_mask(gt, m))


def test_make_masked_set_array_deterministic_and_stable(tmp_path):
    images = rand_images(4)
    a = make_masked_set(images, tmp_path / "a", seed=3)
    b = make_masked_set(images[:2], tmp_path / "b", seed=3)  # fewer images: same earlier masks
    for name in ("image_00000.png", "image_00001.png"):
        assert np.array_equal(np.asarray(Image.open(a / "mask64" / name)),
                              np.asarray(Image.open(b / "mask64" / name)))
    ds = MaskedImageDataset(a / "masked_image", a / "mask64", 64, MEAN, STD)
    image, known, i = ds[2]
    assert image.shape == (3, 64, 64) and known.shape == (1, 64, 64) and known.dtype == torch.bool and i == 2
    mask = np.asarray(Image.open(a / "mask64" / "image_00002.png"))
    assert torch.equal(known[0], torch.from_numpy(mask == 255))
    assert torch.allclose(denormalize(image, MEAN, STD)[:, known[0]],
                          torch.from_numpy(images[2]).permute(2, 0, 1)[:, known[0]] / 255, atol=1e-6)


def test_masked_dataset_pairs_by_sorted_order(tmp_path):
    make_dirs(tmp_path)
    images = rand_images(3)
    for i in (2, 0, 1):  # written out of order, with unrelated mask names
        save(tmp_path / "m" / f"x{i}.png", images[i])
        mask = np.full((64, 64), 255, np.uint8)
        mask[:, :10 * (i + 1)] = 0
        save(tmp_path / "k" / f"mask_{i}.png", np.stack([mask] * 3, -1))  # RGB masks are accepted
    ds = MaskedImageDataset(tmp_path / "m", tmp_path / "k", 64, MEAN, STD)
    assert [p.name for p in ds.masked_paths] == ["x0.png", "x1.png", "x2.png"]
    assert [p.name for p in ds.mask_paths] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    for i in range(3):
        assert (~ds[i][1]).sum() == 64 * 10 * (i + 1)


def test_masked_dataset_count_mismatch(tmp_path):
    make_dirs(tmp_path)
    for i, im in enumerate(rand_images(3)):
        save(tmp_path / "m" / f"{i}.png", im)
    save(tmp_path / "k" / "0.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(UserError, match=re.escape(f"3 masked images in {tmp_path / 'm'} but 1 masks in {tmp_path / 'k'}")):
        MaskedImageDataset(tmp_path / "m", tmp_path / "k", 64, MEAN, STD)


def test_masked_dataset_size_mismatch(tmp_path):
    make_dirs(tmp_path)
    save(tmp_path / "m" / "0.png", rand_images(1)[0])
    bad = save(tmp_path / "k" / "0.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(UserError, match=re.escape(str(bad))):
        MaskedImageDataset(tmp_path / "m", tmp_path / "k", 64, MEAN, STD)


# ----------------------------------------------------------------------------- image loading

def test_list_images_errors(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "nope"))):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'empty'} contains no images")):
        list_images(tmp_path / "empty")
    with pytest.raises(UserError, match="not a folder"):
        list_images(tmp_path / "empty" / "notes.txt")


def test_list_images_sorted_case_insensitive(tmp_path):
    for name in ("b.PNG", "a.jpeg", "c.txt", "d.Bmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "d.Bmp"]
    assert ".webp" in IMAGE_EXTENSIONS


def truncated_png(path):
    save(path, rand_images(1)[0])
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def test_corrupt_image_raises_naming_file(tmp_path):
    bad = truncated_png(tmp_path / "bad.png")
    with pytest.raises(UserError, match=re.escape(str(bad))):
        load_rgb(bad, 64)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(UserError, match=re.escape(str(junk))):
        load_rgb(junk, 64)
    with pytest.raises(UserError, match=re.escape(str(bad))):
        ImageFolderDataset(tmp_path, 64, MEAN, STD)


def test_skip_mode_drops_bad_files(tmp_path, capsys):
    for i, im in enumerate(rand_images(3)):
        save(tmp_path / f"ok{i}.png", im)
    bad = truncated_png(tmp_path / "bad.png")
    ds = ImageFolderDataset(tmp_path, 64, MEAN, STD, on_bad="skip")
    assert [p.name for p in ds.paths] == ["ok0.png", "ok1.png", "ok2.png"]
    assert ds.uint8.shape == (3, 3, 64, 64) and len(ds) == 3
    err = capsys.readouterr().err
    assert str(bad) in err and len(err.strip().splitlines()) == 1
    (tmp_path / "all_bad").mkdir()
    truncated_png(tmp_path / "all_bad" / "x.png")
    with pytest.raises(UserError, match="unreadable"):
        ImageFolderDataset(tmp_path / "all_bad", 64, MEAN, STD, on_bad="skip")


def test_modes_and_sizes_load_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = save(tmp_path / "gray.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[:32, :, 3] = 200, 255  # bottom half transparent
    rgba_path = save(tmp_path / "rgba.png", rgba)
    odd = save(tmp_path / "odd.png", rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))
    pal = tmp_path / "pal.png"
    Image.fromarray(rand_images(1)[0]).convert("P").save(pal)
    for p in (gray, rgba_path, odd, pal):
        x = load_rgb(p, 64)
        assert x.shape == (64, 64, 3) and x.dtype == np.uint8
    x = load_rgb(rgba_path, 64)
    assert (x[:32] == [200, 0, 0]).all() and (x[32:] == 0).all()  # composited on black
    g = load_rgb(gray, 64)
    assert (g[..., 0] == g[..., 1]).all()


def test_images_at_resolution_untouched(tmp_path):
    im = rand_images(1)[0]
    assert np.array_equal(load_rgb(save(tmp_path / "a.png", im), 64), im)


def test_dataset_items_partial_limit(tmp_path):
    images = rand_images(10)
    for i, im in enumerate(images):
        save(tmp_path / f"{i:02d}.png", im)
    ds = ImageFolderDataset(tmp_path, 64, MEAN, STD)
    assert len(ds) == 10 and ds.uint8.dtype == torch.uint8
    x = ds[4]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert np.array_equal(to_uint8(denormalize(x, MEAN, STD)), images[4])
    assert len(ImageFolderDataset(tmp_path, 64, MEAN, STD, partial=0.3)) == 3
    assert len(ImageFolderDataset(tmp_path, 64, MEAN, STD, limit=4)) == 4
    with pytest.raises(UserError, match="partial"):
        ImageFolderDataset(tmp_path, 64, MEAN, STD, partial=1.5)


def test_normalize_round_trip():
    x = torch.rand(2, 3, 8, 8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert torch.allclose(denormalize(normalize(x, mean, std), mean, std), x, atol=1e-6)
    y = normalize(x, MEAN, STD)
    assert y.min() >= -1 and y.max() <= 1
    assert denormalize(torch.full((3, 2, 2), 5.0), MEAN, STD).max() == 1  # clamped


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_not_trivial(tmp_path):
    a = make_synthetic_images(20, seed=1)
    assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, make_synthetic_images(20, seed=1))
    assert np.array_equal(a[:5], make_synthetic_images(5, seed=1))  # image i depends only on (seed, i)
    assert not np.array_equal(a, make_synthetic_images(20, seed=2))
    assert not np.array_equal(a, make_synthetic_images(20, seed=1, split="val"))
    assert a.reshape(20, -1).std(axis=1).min() > 10
    assert len({im.tobytes() for im in a}) == 20
    folder = write_synthetic_folder(tmp_path, 3, seed=1)
    assert folder == tmp_path / "train"
    assert [p.name for p in list_images(folder)] == ["image_00000.png", "image_00001.png", "image_00002.png"]
    assert np.array_equal(load_rgb(folder / "image_00001.png", 64), a[1])
