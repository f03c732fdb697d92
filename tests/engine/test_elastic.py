"""Resuming on another world size: the gradient accumulation that keeps the global batch."""

from __future__ import annotations

import pytest

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.engine.elastic import keep_global_batch, needs_universal, other_world, universal_dir
from beit_ds.recipe import PretrainRecipe


def _recipe(micro: int, accum: int) -> PretrainRecipe:
    return load_recipe(PretrainRecipe, "pretrain_demo_cpu",
                       [f"schedule.micro_batch_size={micro}", f"schedule.grad_accum={accum}"])


@pytest.mark.parametrize(
    "saved_world, global_batch, world, micro, expected_accum",
    [(2, 8, 1, 4, 2), (1, 8, 2, 4, 1), (8, 1024, 4, 32, 8), (4, 1024, 16, 32, 2), (2, 8, 2, 4, 1)],
)
def test_accumulation_keeps_the_global_batch(saved_world, global_batch, world, micro, expected_accum):
    recipe = _recipe(micro, 1)
    out = keep_global_batch(recipe, {"world_size": saved_world, "global_batch": global_batch}, world, "ckpt")
    assert out.schedule.grad_accum == expected_accum
    assert out.schedule.micro_batch_size == micro  # the micro batch stays
    assert out.schedule.micro_batch_size * out.schedule.grad_accum * world == global_batch
    assert recipe.schedule.grad_accum == 1  # a new recipe; the loaded one is not written to


def test_indivisible_global_batch_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^ckpt/COMPLETE.json: global_batch=8 \(saved on 2 ranks\) cannot be kept"
                       r" on 3 ranks with schedule.micro_batch_size=4: expected a multiple of micro batch x world"
                       r" size = 12$"):
        keep_global_batch(_recipe(4, 1), {"world_size": 2, "global_batch": 8}, 3, "ckpt/COMPLETE.json")


def test_when_the_universal_form_is_needed(tmp_path):
    zero = {"files": {"mp_rank_00_model_states.pt": {}, "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": {}}}
    assert not needs_universal({"world_size": 2, **zero}, 2)
    assert needs_universal({"world_size": 2, **zero}, 1)
    assert needs_universal({"world_size": 2, "universal": True}, 2)
    stage0 = {"world_size": 2, "files": {"mp_rank_00_model_states.pt": {}, "rng_rank0.pt": {}}}
    assert not needs_universal(stage0, 1)  # replicated: loads on any world size as it is
    assert other_world(stage0, 1) and not other_world(stage0, 2)
    assert universal_dir(tmp_path / "step_00000010") == tmp_path / "step_00000010_universal"
