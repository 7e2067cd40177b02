"""Bad input gives one line `error: ...` naming the thing and the fix, a non-zero exit and
no traceback, for every CLI; inputs that only look odd (grayscale, RGBA, odd sizes,
--sweet-spot past the end) succeed.

Most cases call `run_cli(main, argv)` in this process: that is all `__main__` does, and
it saves a torch import per case. Exit codes come from the SystemExit it raises; any
other exception escapes as the traceback a user would see, and fails the test. A few
cases run the real scripts as subprocesses to check that wiring too.
"""
import importlib.util
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import inpainting
import training_transformer
import training_vqgan
from conftest import REPO, VQ_TINY, maskgit_tiny_cfg, run_script
from data import make_masked_set, make_synthetic_images
from models.VQGAN import VQGAN
from models.VQGAN_Transformer import MaskGit
from runtime.checkpoints import save_checkpoint
from utils import apply_overrides, load_config, run_cli

_spec = importlib.util.spec_from_file_location("fid_score_gpu",
                                               REPO / "faster-pytorch-fid" / "fid_score_gpu.py")
fid_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fid_cli)

MAINS = {"vqgan": training_vqgan.main, "transformer": training_transformer.main,
         "inpainting": inpainting.main, "fid": fid_cli.main}
SCRIPTS = {"vqgan": "training_vqgan.py", "transformer": "training_transformer.py",
           "inpainting": "inpainting.py", "fid": "faster-pytorch-fid/fid_score_gpu.py"}


def save_png(path, array, mode=None):
    Image.fromarray(array, mode).save(path)


def images(n, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_vq_ckpt):
    """Every input the cases need, written once into one folder."""
    root = tmp_path_factory.mktemp("cli")
    for name in ("good", "empty", "corrupt", "mixed"):
        (root / name).mkdir()
    for i, im in enumerate(images(4)):
        save_png(root / "good" / f"{i}.png", im)
        save_png(root / "corrupt" / f"{i}.png", im)
    full = (root / "good" / "0.png").read_bytes()
    (root / "corrupt" / "bad.png").write_bytes(full[:len(full) // 2])  # truncated mid-stream
    rgb = images(3, seed=1)
    save_png(root / "mixed" / "gray.png", rgb[0, ..., 0], "L")
    save_png(root / "mixed" / "rgba.png", np.dstack([rgb[1], np.full((64, 64), 128, np.uint8)]),
             "RGBA")
    save_png(root / "mixed" / "odd.png", images(1, size=90)[0, :50])  # 90x50
    save_png(root / "mixed" / "rgb.png", rgb[2])
    (root / "a_file").write_text("not a folder")

    masked = make_masked_set(make_synthetic_images(3, split="test"), root / "masked")
    shutil.copytree(masked / "mask64", root / "masks_fewer")
    (root / "masks_fewer" / "image_00002.png").unlink()
    shutil.copytree(masked / "mask64", root / "masks_small")
    save_png(root / "masks_small" / "image_00001.png", np.full((32, 32), 255, np.uint8))
    shutil.copytree(masked / "masked_image", root / "masked_corrupt")
    (root / "masked_corrupt" / "image_00001.png").write_bytes(full[:100])
    for d in ("masked_odd", "mask_odd"):  # an RGBA 80x50 masked image with its 80x50 mask
        (root / d).mkdir()
    opaque = np.full((50, 80), 255, np.uint8)
    save_png(root / "masked_odd" / "a.png", np.dstack([images(1, 80)[0, :50], opaque]), "RGBA")
    save_png(root / "mask_odd" / "a.png", np.where(np.arange(80) < 40, 0, opaque))  # left half hole

    vq_cfg = load_config(VQ_TINY)
    del vq_cfg["training"]["seed"]
    (root / "vq_no_seed.yml").write_text(yaml.safe_dump(vq_cfg))
    mg_cfg = maskgit_tiny_cfg()
    (root / "maskgit.yml").write_text(yaml.safe_dump(mg_cfg))
    del mg_cfg["train_param"]["seed"]
    (root / "maskgit_no_seed.yml").write_text(yaml.safe_dump(mg_cfg))

    torch.manual_seed(0)
    config = maskgit_tiny_cfg(tiny_vq_ckpt)  # a fixed tokenizer, so inpainting is reproducible
    state = MaskGit(config["model_param"]).transformer.state_dict()
    save_checkpoint({"model": state, "config": config}, root / "transformer.pt")
    misfit = dict(state)
    misfit.pop(next(iter(misfit)))
    name = next(k for k, v in misfit.items() if v.dim() == 2)
    misfit[name] = misfit[name][:, :3]
    save_checkpoint({"model": misfit, "config": config}, root / "transformer_misfit.pt")
    (root / "resume_misfit_tr").mkdir()
    shutil.copy(root / "transformer_misfit.pt", root / "resume_misfit_tr" / "last.pt")
    (root / "truncated.pt").write_bytes((root / "transformer.pt").read_bytes()[:500])
    small_vq = dict(vq_cfg, latent_dim=8)
    save_checkpoint(VQGAN.from_config(small_vq).state_dict(), root / "vq_misfit.pt")
    (root / "resume_misfit").mkdir()
    save_checkpoint({"model": VQGAN.from_config(small_vq).state_dict()},
                    root / "resume_misfit" / "last.pt")
    return root


# A good command line per CLI; "{root}" is the fixture folder. Each case replaces or adds
# flags (None = a bare flag) and names the text its one error line must contain.
GOOD = {
    "vqgan": {"--config": VQ_TINY, "--out": "{root}/vq_out", "--data": "{root}/good",
              "--epochs": 1, "--batch-size": 4, "--device": "cpu"},
    "transformer": {"--MaskGitConfig": "{root}/maskgit.yml", "--checkpoint-path": "{root}/tr_out",
                    "--token-cache": "{root}/cache", "--train_d_path": "{root}/good", "--epochs": 1,
                    "--batch-size": 4, "--device": "cpu"},
    "inpainting": {"--load-transformer-ckpt-path": "{root}/transformer.pt",
                   "--test-maskedimage-path": "{root}/masked/masked_image",
                   "--test-mask-path": "{root}/masked/mask64", "--out": "{root}/inp_out",
                   "--device": "cpu", "--total-iter": 2},
    "fid": {"--predicted-path": "{root}/good", "--gt-path": "{root}/good", "--device": "cpu"},
}

CKPT = "--load-transformer-ckpt-path"
ERRORS = {
    "vqgan-missing-data": ("vqgan", {"--data": "{root}/nope"}, "nope"),
    "vqgan-empty-data": ("vqgan", {"--data": "{root}/empty"}, "contains no images"),
    "vqgan-corrupt-png": ("vqgan", {"--data": "{root}/corrupt"}, "bad.png"),
    "vqgan-missing-config": ("vqgan", {"--config": "{root}/nope.yml"}, "nope.yml"),
    "vqgan-config-missing-key": ("vqgan", {"--config": "{root}/vq_no_seed.yml"}, "seed"),
    "vqgan-unknown-override": ("vqgan", {"--set": "nonexistent.key=1"}, "nonexistent"),
    "vqgan-no-cuda": ("vqgan", {"--device": "cuda"}, "cuda"),
    "vqgan-unwritable-out": ("vqgan", {"--out": "{root}/a_file/sub"}, "a_file"),
    "vqgan-batch-size-0": ("vqgan", {"--batch-size": 0}, "training.batch_size = 0"),
    "vqgan-resume-misfit": ("vqgan", {"--out": "{root}/resume_misfit", "--resume": None},
                            "does not fit the config"),
    "transformer-missing-data": ("transformer", {"--train_d_path": "{root}/nope"}, "nope"),
    "transformer-empty-data": ("transformer", {"--train_d_path": "{root}/empty"}, "contains no images"),
    "transformer-corrupt-png": ("transformer", {"--train_d_path": "{root}/corrupt"}, "bad.png"),
    "transformer-missing-config": ("transformer", {"--MaskGitConfig": "{root}/nope.yml"}, "nope.yml"),
    "transformer-config-missing-key": ("transformer", {"--MaskGitConfig": "{root}/maskgit_no_seed.yml"},
                                       "seed"),
    "transformer-unknown-override": ("transformer", {"--set": "nonexistent.key=1"}, "nonexistent"),
    "transformer-vq-misfit": ("transformer", {"--set": "model_param.VQ_Configs.VQ_CKPT_path="
                                                       "{root}/vq_misfit.pt"}, "vq_misfit.pt"),
    "transformer-no-cuda": ("transformer", {"--device": "cuda"}, "cuda"),
    "transformer-unwritable-out": ("transformer", {"--checkpoint-path": "{root}/a_file/sub"}, "a_file"),
    "transformer-accum-0": ("transformer", {"--accum-grad": 0}, "accum_grad = 0"),
    "transformer-negative-lr": ("transformer", {"--learning-rate": -1e-4}, "learning_rate = -0.0001"),
    "transformer-resume-misfit": ("transformer", {"--checkpoint-path": "{root}/resume_misfit_tr",
                                                  "--resume": None}, "does not fit the config"),
    "transformer-missing-epoch": ("transformer", {"--start-from-epoch": 7}, "epoch_007.pt"),
    "inpainting-missing-ckpt": ("inpainting", {CKPT: "{root}/nope.pt"}, "nope.pt"),
    "inpainting-truncated-ckpt": ("inpainting", {CKPT: "{root}/truncated.pt"}, "truncated.pt"),
    "inpainting-ckpt-misfit": ("inpainting", {CKPT: "{root}/transformer_misfit.pt"}, "does not fit"),
    "inpainting-missing-images": ("inpainting", {"--test-maskedimage-path": "{root}/nope"}, "nope"),
    "inpainting-empty-images": ("inpainting", {"--test-maskedimage-path": "{root}/empty"},
                                "contains no images"),
    "inpainting-corrupt-png": ("inpainting", {"--test-maskedimage-path": "{root}/masked_corrupt"},
                               "image_00001.png"),
    "inpainting-mask-count": ("inpainting", {"--test-mask-path": "{root}/masks_fewer"}, "2 masks"),
    "inpainting-mask-size": ("inpainting", {"--test-mask-path": "{root}/masks_small"}, "32x32"),
    "inpainting-unknown-mask-func": ("inpainting", {"--mask-func": "wobbly"}, "wobbly"),
    "inpainting-total-iter-0": ("inpainting", {"--total-iter": 0}, "--total-iter 0"),
    "inpainting-batch-size-0": ("inpainting", {"--batch-size": 0}, "--batch-size = 0"),
    "inpainting-negative-temperature": ("inpainting", {"--temperature": -0.5}, "--temperature = -0.5"),
    "inpainting-no-cuda": ("inpainting", {"--device": "cuda"}, "cuda"),
    "inpainting-unwritable-out": ("inpainting", {"--out": "{root}/a_file/sub"}, "a_file"),
    "fid-missing-folder": ("fid", {"--predicted-path": "{root}/nope"}, "nope"),
    "fid-empty-folder": ("fid", {"--predicted-path": "{root}/empty"}, "empty"),
    "fid-corrupt-png": ("fid", {"--predicted-path": "{root}/corrupt"}, "bad.png"),
    "fid-no-cuda": ("fid", {"--device": "cuda"}, "cuda"),
    "fid-unwritable-stats": ("fid", {"--save-stats": "{root}/a_file/gt.npz"}, "a_file"),
}

SUCCEEDS = {  # (cli, flags, a file the run must write)
    # grayscale, RGBA and 90x50 images are converted to 64x64 RGB
    "vqgan-mixed-modes-and-sizes": ("vqgan", {"--data": "{root}/mixed"}, "vq_out/last.pt"),
    "transformer-skip-bad-image": ("transformer", {"--train_d_path": "{root}/corrupt",
                                                   "--on-bad-image": "skip"}, "tr_out/last.pt"),
    "inpainting-rgba-odd-size": ("inpainting", {"--test-maskedimage-path": "{root}/masked_odd",
                                                "--test-mask-path": "{root}/mask_odd",
                                                "--out": "{root}/inp_odd"},
                                 "inp_odd/test_results/image_000.png"),
}


def argv(cli: str, changes: dict, root) -> list[str]:
    flags = {**GOOD[cli], **changes}
    out = []
    for flag, value in flags.items():
        out += [flag] if value is None else [flag, str(value).format(root=root)]
    return out


def run(cli, args, capsys) -> tuple[int, str]:
    """(exit code, stderr) of `run_cli(main, args)`, as the script would give them."""
    try:
        run_cli(MAINS[cli], args)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, stderr, needle):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert needle in lines[0]


@pytest.mark.parametrize("case", ERRORS)
def test_bad_input_is_one_line_error(case, root, capsys):
    cli, changes, needle = ERRORS[case]
    assert_one_line_error(*run(cli, argv(cli, changes, root), capsys), needle)


def test_checkpoint_misfit_lists_the_first_differences(root, capsys):
    _, stderr = run("inpainting", argv("inpainting", ERRORS["inpainting-ckpt-misfit"][1], root), capsys)
    assert "missing " in stderr and ": file (" in stderr and "vs model (" in stderr


@pytest.mark.parametrize("case", SUCCEEDS)
def test_odd_but_valid_input_succeeds(case, root, capsys):
    cli, changes, output = SUCCEEDS[case]
    code, stderr = run(cli, argv(cli, changes, root), capsys)
    assert code == 0, stderr
    assert "error" not in stderr and (root / output).is_file()
    if case == "transformer-skip-bad-image":
        warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "bad.png" in warnings[0]


def test_sweet_spot_minus_one_or_past_the_end_means_no_early_stop(root, capsys):
    results = []
    for sweet_spot in (-1, 2, 5):  # --total-iter 2
        out = root / f"sweet_{sweet_spot}"
        code, stderr = run("inpainting", argv("inpainting", {"--sweet-spot": sweet_spot, "--out": out},
                                              root), capsys)
        assert code == 0, stderr
        results.append([np.asarray(Image.open(p)) for p in sorted((out / "test_results").iterdir())])
    assert len(results[0]) == 3
    assert all(np.array_equal(a, b) for r in results[1:] for a, b in zip(results[0], r))


@pytest.mark.parametrize("case", ["vqgan-missing-data", "transformer-missing-config",
                                  "inpainting-mask-count", "fid-missing-folder"])
def test_real_scripts_print_one_line(case, root):
    cli, changes, needle = ERRORS[case]
    result = run_script(SCRIPTS[cli], *argv(cli, changes, root))
    assert_one_line_error(result.returncode, result.stderr, needle)


def test_overrides_read_exponent_floats_as_numbers(tmp_path):
    """YAML 1.1 reads 1e-4 (no dot) as a string, which reached AdamW as a learning rate."""
    assert apply_overrides({"lr": 1.0}, ["lr=1e-4"])["lr"] == 1e-4
    (tmp_path / "c.yml").write_text("lr: 3e-4\nname: e5\n")
    assert load_config(tmp_path / "c.yml") == {"lr": 3e-4, "name": "e5"}
