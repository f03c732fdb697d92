"""A checkpoint's weights in one piece: fp32, gathered from every rank's ZeRO shards (or from a
stage-0 checkpoint's model states and fp32 masters), read without running code; and a task with
its model rebuilt from a checkpoint, which a task's export or evaluation starts from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, cast

import torch
from torch import nn

from beit_ds.config_io import stored_recipe
from beit_ds.distributed import ProcessPlace
from beit_ds.engine import elastic, safe_load
from beit_ds.engine.checkpoint import GROUP_NAMES, CheckpointError, verify
from beit_ds.engine.jsonlike import as_object
from beit_ds.engine.saved import SavedCheckpoint, checkpoint_client_state
from beit_ds.engine.task import Task
from beit_ds.recipe import TrainingRecipe

T = TypeVar("T", bound=Task[TrainingRecipe])


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights gathered from every rank's ZeRO shards, or of a stage-0 checkpoint (every file
    read without running code)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        safe_load.check_files(tag_dir, "checkpoint")
        if not elastic.has_zero_shards(p.name for p in tag_dir.iterdir()):
            return stage0_state_dict(tag_dir)
        with safe_load.weights_only_loading():
            sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except safe_load.UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    return {k: v.contiguous() for k, v in sd.items()}


def stage0_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO stage-0 checkpoint (no optimizer shards; DeepSpeed's
    ``zero_to_fp32`` reads only ZeRO ones): the module's own weights in an fp32 run; in bf16 /
    fp16, the optimizer's fp32 master copies (``fp32_groups``), named by the group order the
    save recorded (``checkpoint.fp32_group_names``), and the module's buffers."""
    states = checkpoint_client_state(tag_dir)
    module = states["module"]
    if not isinstance(module, dict):
        raise CheckpointError(f"checkpoint {tag_dir}: its model states hold no module state dict")
    sd = {k: v.float().contiguous() for k, v in module.items()}
    masters = as_object(states.get("optimizer") or {}).get("fp32_groups")
    if masters is None:
        return sd
    names = states.get(GROUP_NAMES)
    if not isinstance(names, list):  # None: saved before beit_ds recorded them
        raise CheckpointError(f"checkpoint {tag_dir}: a stage-0 bf16/fp16 checkpoint without {GROUP_NAMES}"
                              " (saved before beit_ds recorded them): its fp32 master weights cannot be named")
    groups = cast(list[list[torch.Tensor]], masters)  # DeepSpeed's fp32_groups: per group, its fp32 tensors
    for group_names, tensors in zip(names, groups, strict=True):
        for name, tensor in zip(group_names, tensors, strict=True):
            if tuple(tensor.shape) != tuple(sd[name].shape):
                raise CheckpointError(f"checkpoint {tag_dir}: fp32 master of {name} has shape {tuple(tensor.shape)},"
                                      f" the module's {tuple(sd[name].shape)}")
            sd[name] = tensor.float().contiguous()
    return sd


def checkpoint_task(task_cls: type[T], saved: SavedCheckpoint) -> tuple[T, nn.Module]:
    """A ``task_cls`` of the recipe ``saved`` holds (checked with ``check_saved``, on one process) and
    its model with the consolidated weights, in eval mode: what a task's export or evaluation of a
    checkpoint starts from. The checkpoint's files are verified first (not their checksums)."""
    verify(saved.tag_dir, checksums=False)
    task = task_cls(stored_recipe(task_cls.recipe_type, saved.recipe), ProcessPlace())
    task.check_saved()
    model = task.build_model()
    model.load_state_dict(consolidated_state_dict(saved.tag_dir), strict=True)
    return task, model.eval()
