"""The stage-1 ablation's variants each change what they say on the recipe, and optional
training keys that a config leaves out (fm_weight, max_steps) take --set overrides."""
from pathlib import Path

import pytest
import yaml

import training_transformer
import training_vqgan
from benchmarks import vqgan_ablation
from conftest import REPO
from utils import apply_overrides, load_config


def resolved(argv):
    return training_vqgan.resolve_config(training_vqgan.parse_args(argv))


@pytest.mark.parametrize("name", list(vqgan_ablation.VARIANTS))
def test_every_variant_resolves_to_the_recipe_with_its_change(name, tmp_path):
    cfg = resolved(vqgan_ablation.variant_args(name, tmp_path, 400, tmp_path / "out"))
    recipe = resolved(["--config", str(vqgan_ablation.CONFIG)])
    # a variant at another batch sees as many images: its steps and restart interval scale
    scale = recipe["training"]["batch_size"] / apply_overrides(
        recipe, vqgan_ablation.VARIANTS[name])["training"]["batch_size"]
    steps = round(400 * scale)
    expected = apply_overrides(recipe, [f"training.restart_every={round(recipe['training']['restart_every'] * scale)}",
                                        *vqgan_ablation.VARIANTS[name], f"training.max_steps={steps}",
                                        f"training.warmup_steps={steps // 40}"])
    if not any(s.startswith("training.disc_start") for s in vqgan_ablation.VARIANTS[name]):
        expected["training"]["disc_start"] = int(0.7 * steps)  # 70% of the run, as in the recipe
    assert cfg == expected


def test_a_batch_variant_sees_the_recipes_images():
    recipe = resolved(["--config", str(vqgan_ablation.CONFIG)])["training"]
    small = resolved(vqgan_ablation.variant_args("batch 8, twice the steps", Path("data"), 400,
                                                 Path("out")))["training"]
    assert small["batch_size"] == 8
    assert small["max_steps"] * 8 == 400 * recipe["batch_size"]  # as many images
    assert small["restart_every"] * 8 == recipe["restart_every"] * recipe["batch_size"]
    assert small["disc_start"] == int(0.7 * small["max_steps"])


def test_markdown_rows():
    rows = [{"variant": "recipe", "val_psnr": 24.064, "val_l1": 0.09571, "val_usage": 0.9912,
             "val_perplexity": 691.6, "minutes": 5.25}]
    assert "| recipe | 24.06 | 0.0957 | 99.1% | 692 | 5.2 |" in vqgan_ablation.markdown(rows, 375)


def test_set_reaches_optional_keys_a_config_leaves_out(tmp_path):
    config = REPO / "configs" / "VQGAN_catface_compact.yml"
    assert "fm_weight" not in load_config(config)["training"]
    assert resolved(["--config", str(config)])["training"]["fm_weight"] == 0.0
    assert resolved(["--config", str(config), "--set", "training.fm_weight=0.5"])["training"]["fm_weight"] == 0.5
    old = load_config(REPO / "configs" / "MaskGit.yml")
    del old["train_param"]["max_steps"]  # as configs from before step-counted recipes
    (tmp_path / "old.yml").write_text(yaml.safe_dump(old))
    args = training_transformer.parse_args(["--MaskGitConfig", str(tmp_path / "old.yml"),
                                            "--set", "train_param.max_steps=7"])
    assert training_transformer.resolve_config(args)["train_param"]["max_steps"] == 7


def test_repeated_set_flags_add_up_instead_of_replacing_each_other():
    vq = resolved(["--config", str(REPO / "configs" / "VQGAN_catface_compact.yml"),
                   "--set", "training.disc_start=7", "--set", "training.learning_rate=0.003"])
    assert (vq["training"]["disc_start"], vq["training"]["learning_rate"]) == (7, 0.003)
    args = training_transformer.parse_args(["--MaskGitConfig", str(REPO / "configs" / "MaskGit_catface_compact.yml"),
                                            "--set", "train_param.max_steps=7",
                                            "--set", "train_param.warmup_steps=3"])
    tp = training_transformer.resolve_config(args)["train_param"]
    assert (tp["max_steps"], tp["warmup_steps"]) == (7, 3)
