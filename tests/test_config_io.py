"""Recipes: YAML + presets + overrides into typed sections; one-line errors naming the key."""

from __future__ import annotations

import typing

import pytest

from beit_ds.config import (
    ConfigError,
    DataConfig,
    FinetuneConfig,
    LoaderConfig,
    ModelConfig,
    SegDataConfig,
    TuneConfig,
)
from beit_ds.config.presets import PRESETS
from beit_ds.config_io import apply_overrides, load_recipe, save_yaml, stored_recipe
from beit_ds.recipe import KINDS, FinetuneRecipe, PretrainRecipe, SegmentationRecipe


def test_precedence_defaults_preset_yaml_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  preset: beit_large_patch16_224\n  drop_path_rate: 0.2\noptim:\n  base_lr: 2e-3\n")
    recipe = load_recipe(PretrainRecipe, path, ["model.drop_path_rate=0.3", "schedule.epochs=150"])
    assert recipe.model.depth == 24 and recipe.model.embed_dim == 1024  # preset
    assert recipe.model.drop_path_rate == 0.3  # override beats YAML
    assert recipe.optim.base_lr == 2e-3  # "2e-3" is a string to YAML 1.1: coerced to float
    assert recipe.schedule.epochs == 150 and recipe.schedule.warmup_epochs == 10.0  # default


def test_resolved_yaml_round_trips(tmp_path):
    recipe = load_recipe(PretrainRecipe, None, ["model.preset=beit_debug_patch4_32", "optim.betas=[0.9, 0.98]"])
    save_yaml(recipe, tmp_path / "resolved.yaml")
    again = load_recipe(PretrainRecipe, tmp_path / "resolved.yaml")
    assert again == recipe and again.optim.betas == (0.9, 0.98)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("optim.lr=fast", "optim.lr='fast': expected a number"),
        ("model.depth=1.5", "model.depth=1.5: expected an integer"),
        ("model.preset=beit_huge", "model.preset='beit_huge': expected one of"),
        ("model.compile=block", "model.compile='block': expected one of 'none', 'branches', 'blocks'"),
        ("schedule.micro_batch_size=0", "schedule.micro_batch_size=0: expected a positive integer"),
        ("masking.mask_ratio=2", "masking.mask_ratio=2"),
        ("nosection.key=1", "nosection: unknown key"),
        ("optim", "override 'optim': expected section.key=value"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(PretrainRecipe, None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file, and not a shipped recipe"):
        load_recipe(PretrainRecipe, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: line"):
        load_recipe(PretrainRecipe, bad)


def test_overrides_do_not_mutate_input():
    data = {"optim": {"lr": 1.0}}
    out = apply_overrides(data, ["optim.lr=2"])
    assert data["optim"]["lr"] == 1.0 and out["optim"]["lr"] == 2


def test_the_resolved_yaml_replaces_a_planted_link_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").symlink_to(victim)
    save_yaml(load_recipe(PretrainRecipe, "pretrain_demo_cpu"), run / "recipe.yaml")
    assert victim.read_text() == "precious"
    assert not (run / "recipe.yaml").is_symlink()
    assert load_recipe(PretrainRecipe, str(run / "recipe.yaml")) == load_recipe(PretrainRecipe, "pretrain_demo_cpu")


def test_inherit_resolves_beside_the_including_file(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    (recipes / "base").mkdir(parents=True)
    (recipes / "parent.yaml").write_text("optim:\n  base_lr: 2.0e-3\nschedule:\n  epochs: 30\n")
    (recipes / "child.yaml").write_text("inherit: parent.yaml\nschedule:\n  epochs: 40\n")
    (recipes / "base" / "grand.yaml").write_text("optim:\n  min_lr: 3.0e-6\n")
    (recipes / "nested.yaml").write_text("inherit: base/grand.yaml\n")
    (recipes / "shipped.yaml").write_text("inherit: pretrain_demo_cpu\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "parent.yaml").write_text("optim:\n  base_lr: 9.0e-3\n")  # a decoy in the working directory
    (elsewhere / "pretrain_demo_cpu.yaml").write_text("schedule:\n  epochs: 11\n")  # a decoy of a shipped name
    monkeypatch.chdir(elsewhere)
    child = load_recipe(PretrainRecipe, recipes / "child.yaml")
    assert child.optim.base_lr == 2e-3 and child.schedule.epochs == 40  # the parent beside it, the child's keys win
    assert load_recipe(PretrainRecipe, recipes / "nested.yaml").optim.min_lr == 3e-6
    shipped = load_recipe(PretrainRecipe, recipes / "shipped.yaml")  # no such file beside it: the shipped recipe
    assert shipped.schedule.epochs == 20 and shipped.model.depth == 4
    (recipes / "missing.yaml").write_text("inherit: base/none.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml: inherit 'base/none.yaml': no such file"):
        load_recipe(PretrainRecipe, recipes / "missing.yaml")


def test_every_root_gives_data_its_own_section_type():
    expected = {"pretrain": DataConfig, "dino": DataConfig, "finetune": DataConfig, "linear_probe": DataConfig,
                "tokenizer": DataConfig, "vqkd": DataConfig, "segmentation": SegDataConfig}
    for kind, root in KINDS.items():
        data = typing.get_type_hints(root)["data"]
        assert data is expected[kind] and issubclass(data, LoaderConfig), kind
    assert type(PretrainRecipe().data) is DataConfig  # the loader keys the runtime reads, in the task's section
    assert typing.get_type_hints(SegmentationRecipe)["finetune"] is TuneConfig
    assert typing.get_type_hints(FinetuneRecipe)["finetune"] is FinetuneConfig


def test_presets_are_torch_free_config_data():
    assert PRESETS["beit_debug_patch4_32"] == ModelConfig(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                                          drop_path_rate=0.0)
    recipe = load_recipe(PretrainRecipe, None, ["model.preset=beit_base_patch16_384"])
    assert (recipe.model.img_size, recipe.model.embed_dim, recipe.model.depth) == (384, 768, 12)


def test_a_stored_recipe_drops_the_keys_its_root_retired():
    # a segmentation checkpoint written while segmentation's finetune section had classification's keys
    stored = {"finetune": {"init": "w.safetensors", "head": "reset", "head_init_scale": 0.001, "ema_decay": 0.0,
                           "label_smoothing": 0.0}, "data": {"source": "pairs", "path": "x"}}
    recipe = stored_recipe(SegmentationRecipe, stored)
    assert recipe.finetune == TuneConfig(init="w.safetensors", label_smoothing=0.0)
    assert "head" in stored["finetune"]  # the mapping read from the checkpoint is left as it was
    with pytest.raises(ConfigError, match=r"^finetune.head: unknown key"):
        load_recipe(SegmentationRecipe, None, ["finetune.head=reset", "data.source=pairs", "data.path=x"])
    with pytest.raises(ConfigError, match=r"^finetune.headd: unknown key"):
        stored_recipe(SegmentationRecipe, {**stored, "finetune": {"headd": "reset"}})
    assert stored_recipe(FinetuneRecipe, {"finetune": {"head": "keep"}}).finetune.head == "keep"


def test_a_root_keeps_its_section_defaults_when_the_recipe_writes_the_section(tmp_path):
    """Segmentation's ``finetune.label_smoothing`` default is 0 (mmseg's plain cross-entropy) and a
    linear probe's ``finetune.head`` is ``reset``, also when the recipe has a ``finetune:`` section
    that leaves them out (it used to fall back to the section class's 0.1 / ``auto``)."""
    from beit_ds.config_io import load_recipe

    for name in ("seg_upernet_base_ade20k_640", "seg_upernet_large_ade20k_640", "seg_setr_pup_base_ade20k_512"):
        assert load_recipe(None, name).finetune.label_smoothing == 0.0, name
    assert load_recipe(None, "seg_camvid_demo_cpu").finetune.label_smoothing == 0.1  # stated: as RESULTS.md ran
    probe = tmp_path / "probe.yaml"
    probe.write_text("kind: linear_probe\nfinetune:\n  init: ''\n")
    loaded = load_recipe(None, probe)
    assert (loaded.finetune.head, loaded.finetune.label_smoothing) == ("reset", 0.0)
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("kind: finetune\nfinetune:\n  init: ''\n")
    assert load_recipe(None, tuned).finetune.label_smoothing == 0.1  # the fine-tuning default (DeiT's)
