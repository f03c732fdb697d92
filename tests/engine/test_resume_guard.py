"""Which checkpoints a run may resume: the optimizer layout (ZeRO stage and precision) it was
saved with must be one this run's DeepSpeed config loads; otherwise one line names both."""

from __future__ import annotations

from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.engine.resume_guard import architecture_diff, check_layout, optimizer_layout
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks import train

ROOT = Path(__file__).resolve().parents[2]
TAG = Path("run/checkpoints/step_00000001")


def _layout(stage: int, precision: str) -> dict:
    return optimizer_layout({"zero_optimization": {"stage": stage}}, precision)


@pytest.mark.parametrize(("saved", "ours"), [((2, "fp32"), (1, "fp32")), ((1, "bf16"), (2, "bf16")),
                                             ((0, "bf16"), (0, "bf16"))])
def test_a_stage_one_two_change_in_one_precision_loads(saved, ours):
    check_layout(TAG, {"optimizer": _layout(*saved)}, _layout(*ours))


@pytest.mark.parametrize(("saved", "ours", "said"), [
    ((2, "fp32"), (0, "fp32"), "saved with ZeRO stage 1/2 in fp32, this run's --deepspeed_config is ZeRO stage 0 in fp32"),
    ((0, "fp32"), (2, "fp32"), "saved with ZeRO stage 0 in fp32, this run's --deepspeed_config is ZeRO stage 1/2 in fp32"),
    ((0, "bf16"), (0, "fp32"), "saved with ZeRO stage 0 in bf16, this run's --deepspeed_config is ZeRO stage 0 in fp32"),
    ((2, "fp32"), (2, "bf16"), "saved with ZeRO stage 1/2 in fp32, this run's --deepspeed_config is ZeRO stage 1/2 in bf16"),
])
def test_other_changes_are_one_line_naming_both(saved, ours, said):
    with pytest.raises(ConfigError, match="DeepSpeed cannot load optimizer state across that change") as err:
        check_layout(TAG, {"optimizer": _layout(*saved)}, _layout(*ours))
    assert str(err.value).startswith(f"--resume {TAG}: {said}:") and "\n" not in str(err.value)


@pytest.mark.parametrize(("old", "new"), [(True, "branches"), (False, "none"), (True, "blocks"), (False, "blocks")])
def test_model_compile_in_its_old_boolean_form_is_no_architecture_change(old, new):
    saved = load_recipe(PretrainRecipe, "pretrain_demo_cpu", [f"model.compile={str(old).lower()}"])
    assert saved.model.compile == ("branches" if old else "none")  # how an old recipe reads now
    stored = {"model": {"compile": old, "depth": 4}}  # as a checkpoint written before the modes stores it
    assert architecture_diff(stored, {"model": {"compile": new, "depth": 4}}, "pretrain") == []


def test_checkpoints_without_the_record_are_read_from_their_files():
    shards = {"files": {"zero_pp_rank_0_mp_rank_00_optim_states.pt": {}, "mp_rank_00_model_states.pt": {}}}
    bf16 = {"files": {"bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": {}, "mp_rank_00_model_states.pt": {}}}
    stage0 = {"files": {"mp_rank_00_model_states.pt": {}}}
    check_layout(TAG, shards, _layout(1, "fp32"))
    check_layout(TAG, stage0, _layout(0, "bf16"))  # precision unknown: not checked
    for info, ours in ((shards, _layout(0, "fp32")), (bf16, _layout(2, "fp32")), (stage0, _layout(2, "fp32"))):
        with pytest.raises(ConfigError, match="cannot load optimizer state"):
            check_layout(TAG, info, ours)


def test_resuming_a_zero2_run_with_a_stage0_config_is_refused_before_deepspeed(ds_single_rank, tmp_path):
    sets = ["model.depth=1", "data.num_workers=0", "schedule.micro_batch_size=8", "log.progress_bar=false",
            "log.tensorboard=false", "checkpoint.export_at_end=false", f"checkpoint.output_dir={tmp_path}"]
    train(load_recipe(PretrainRecipe, "pretrain_demo_cpu", [*sets, "schedule.max_steps=1"]),
             ROOT / "ds_configs/zero2_fp32_cpu.json", resume="none")
    more = load_recipe(PretrainRecipe, "pretrain_demo_cpu", [*sets, "schedule.max_steps=2"])
    with pytest.raises(ConfigError, match="saved with ZeRO stage 1/2 in fp32, this run's --deepspeed_config is"
                                          " ZeRO stage 0 in fp32"):
        train(more, ROOT / "ds_configs/zero0_fp32_cpu.json", resume="auto")
    assert train(more, ROOT / "ds_configs/zero1_fp32_cpu.json", resume="auto").step == 2
