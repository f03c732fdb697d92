"""Shipped recipes load and are checked before any process group: each mistake is one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.config_io import RECIPES_DIR, load_recipe
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks.pretrain import preflight

ROOT = Path(__file__).resolve().parents[2]
FP32 = ROOT / "ds_configs/zero2_fp32_cpu.json"
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("pretrain_*.yaml")) + sorted(
    p.stem for p in RECIPES_DIR.glob("ablation_*.yaml")
)


def test_paper_recipes_have_the_seed_settings():
    b1k = load_recipe(PretrainRecipe, "pretrain_base_in1k")
    assert (b1k.schedule.epochs, b1k.optim.base_lr, b1k.optim.base_batch, b1k.schedule.warmup_epochs) == (800, 1.5e-3, 2048, 10)
    assert (b1k.optim.weight_decay, b1k.optim.clip_grad, b1k.model.drop_path_rate) == (0.05, 3.0, 0.1)
    assert b1k.masking.num_masking_patches == 75 and b1k.data.transform.second_interpolation == "lanczos"
    l22k = load_recipe(PretrainRecipe, "pretrain_large_in22k")
    assert (l22k.model.depth, l22k.model.rel_pos_bias, l22k.schedule.epochs) == (24, "shared", 150)
    assert load_recipe(PretrainRecipe, "ablation_random_masking").masking.strategy == "random"
    assert load_recipe(PretrainRecipe, "ablation_predict_all").mim.predict_all
    assert load_recipe(PretrainRecipe, "ablation_pixel_regression").mim.target == "pixels"


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(PretrainRecipe, name)
    assert recipe.model.img_size == recipe.data.transform.input_size


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem.startswith(("finetune_", "linprobe_")))
)
def test_every_shipped_classification_recipe_loads(name):
    from beit_ds.tasks.finetune import check_recipe

    recipe = load_recipe(None, name, [])
    check_recipe(recipe)
    assert recipe.model.img_size == recipe.data.transform.input_size and recipe.model.num_classes > 0


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"tokenizer.path='/data/dall_e/encoder.pkl': no such file"):
        preflight(load_recipe(PretrainRecipe, "pretrain_base_in22k"), FP32, 1)
    pixels = load_recipe(PretrainRecipe, "ablation_pixel_regression")
    with pytest.raises(ConfigError, match=r"data.path='/data/imagenet/train': no such file or directory"):
        preflight(pixels, FP32, 1)
    demo = load_recipe(PretrainRecipe, "pretrain_demo_cpu")
    with pytest.raises(ConfigError, match="nope.json: no such file"):
        preflight(demo, tmp_path / "nope.json", 1)


def test_inconsistent_settings_are_named(tmp_path):
    demo = load_recipe(PretrainRecipe, "pretrain_demo_cpu")
    flight = preflight(demo, FP32, 4)
    assert flight.global_batch == demo.schedule.micro_batch_size * 4
    assert flight.lr == pytest.approx(1.5e-3 * flight.global_batch / 256)
    # one fact stated once: the patch view follows model.img_size; stating it otherwise is refused
    assert load_recipe(PretrainRecipe, "pretrain_demo_cpu", ["model.img_size=64"]).data.transform.input_size == 64
    with pytest.raises(ConfigError, match=r"data.transform.input_size=32: is model.img_size = 64; leave .* out"):
        load_recipe(PretrainRecipe, "pretrain_demo_cpu", ["model.img_size=64", "data.transform.input_size=32"])
    with pytest.raises(ConfigError, match=r"mim.vocab_size=8192: is the vocabulary of tokenizer.path=.* = 512"):
        load_recipe(PretrainRecipe, "pretrain_demo_cpu", ["mim.vocab_size=8192"])  # before any process group
    in_code = dataclasses.replace(demo, model=dataclasses.replace(demo.model, img_size=64))
    with pytest.raises(ConfigError, match="data.transform.input_size=32: is model.img_size = 64"):
        preflight(in_code, FP32, 1)
    both = tmp_path / "both.json"
    both.write_text('{"fp16": {"enabled": true}, "bf16": {"enabled": true}}')
    with pytest.raises(ConfigError, match="fp16.enabled and bf16.enabled are both true"):
        preflight(demo, both, 1)
