"""A pre-training job with ``model.compile: blocks`` on a real single-rank DeepSpeed engine: it
steps, compiles one region for all blocks (not one per drop-path rate) and saves the eager keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from beit_ds.config_io import load_recipe
from beit_ds.models import build_mim_model
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # inductor compiles the block's forward and backward: ~30 s on a busy 2-core CPU
def test_one_step_with_compiled_blocks_keeps_the_state_dict_keys(ds_single_rank, tmp_path):
    sets = [
        "model.compile=blocks",
        "model.depth=3",
        "model.drop_path_rate=0.1",
        "data.num_workers=0",
        "schedule.micro_batch_size=8",
        "schedule.max_steps=1",
        "log.progress_bar=false",
        "log.tensorboard=false",
        f"checkpoint.output_dir={tmp_path}",
    ]
    recipe = load_recipe(PretrainRecipe, "pretrain_demo_cpu", sets)
    torch.compiler.reset()  # a static compile for this job, whichever test compiled before
    graphs = counters["stats"]["unique_graphs"]
    assert train(recipe, ROOT / "ds_configs/zero2_fp32_cpu.json", resume="none").step == 1
    # with and without grad (the pictures made after the checkpoint): block 0 (drop-path rate 0) and
    # blocks 1-2, whose rates 0.05 and 0.1 share one graph (the rate symbolic) — not one per rate
    assert counters["stats"]["unique_graphs"] - graphs <= 4
    exported = load_file(tmp_path / "export" / "model.safetensors")
    eager = build_mim_model(recipe.model.replace(compile="none"), recipe.mim)
    assert exported.keys() == eager.state_dict().keys()
