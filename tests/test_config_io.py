"""Recipes: YAML + presets + overrides into typed sections; one-line errors naming the key."""

from __future__ import annotations

import pytest

from beit_ds.config import ConfigError
from beit_ds.config_io import apply_overrides, load_recipe, save_yaml
from beit_ds.recipe import PretrainRecipe


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
