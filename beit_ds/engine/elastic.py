"""Resuming on a different number of ranks: DeepSpeed's universal checkpoint and the
gradient accumulation that keeps the global batch.

A ZeRO-1/2 checkpoint holds the fp32 master weights and Adam moments as flat shards, one per
data-parallel rank, so it loads only on the world size that wrote it. DeepSpeed's
``ds_to_universal`` rewrites it as one folder per parameter (``zero/<name>/{fp32,exp_avg,
exp_avg_sq,step}.pt``) that any world size loads with ``"checkpoint": {"load_universal": true}``.
The conversion goes next to the checkpoint, ``step_X`` → ``step_X_universal``; the checkpoint
module publishes it like any checkpoint (staging folder, one rename, ``COMPLETE.json``).

On the new world size the micro batch stays and ``schedule.grad_accum`` changes so that
``micro × accumulation × world`` is the checkpoint's global batch: the lr, the schedule (steps
per epoch, total steps) and the data order (a global sample position) continue unchanged. The
module's persistent buffers, which DeepSpeed's universal load skips, are copied from rank 0's
model states (``restore_buffers``).
"""

from __future__ import annotations

import contextlib
import io
from argparse import Namespace
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from beit_ds.config import ConfigError
from beit_ds.engine import safe_load
from beit_ds.engine.jsonlike import as_int, as_object
from beit_ds.logger import get_logger

SUFFIX = "_universal"

R = TypeVar("R")


def universal_dir(tag_dir: Path) -> Path:
    """Where the universal form of ``tag_dir`` goes: its sibling ``<tag>_universal``."""
    return tag_dir.with_name(tag_dir.name + SUFFIX)


def ds_to_universal(tag_dir: Path, out: Path, workers: int = 1) -> None:
    """Run DeepSpeed's conversion of the ZeRO checkpoint ``tag_dir`` into the new folder ``out``
    (``workers`` > 1: in worker processes — not inside a training process that holds a GPU)."""
    from deepspeed.checkpoint import ds_to_universal as convert

    args = Namespace(input_folder=str(tag_dir), output_folder=str(out), num_extract_workers=workers,
                     num_merge_workers=workers, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints, not our log
        convert.main(args)  # it also writes a `latest_universal` beside `out`: callers convert into staging


def has_zero_shards(file_names: Iterable[str]) -> bool:
    """Whether a checkpoint's files include ZeRO optimizer shards (stage 1/2, one per rank). A
    stage-0 checkpoint has none: every rank's full state is in its model states file, which loads
    on any world size as it is."""
    return any("optim_states" in name for name in file_names)


def partitioned(info: Mapping[str, object]) -> bool:
    """``has_zero_shards`` of the files the checkpoint's ``COMPLETE.json`` ``info`` lists."""
    return has_zero_shards(as_object(info.get("files", {})))


def needs_universal(info: Mapping[str, object], world_size: int) -> bool:
    """Whether a checkpoint with ``COMPLETE.json`` ``info`` must be loaded in universal form."""
    return bool(info.get("universal")) or (as_int(info["world_size"]) != world_size and partitioned(info))


def other_world(info: Mapping[str, object], world_size: int) -> bool:
    """Whether the checkpoint was saved on another world size (or is universal): the global batch
    is then kept by the gradient accumulation."""
    return bool(info.get("universal")) or as_int(info["world_size"]) != world_size


def keep_global_batch(recipe: R, info: Mapping[str, object], world_size: int, where: str) -> R:
    """``recipe`` with the gradient accumulation that keeps the checkpoint's global batch on
    ``world_size`` ranks (``recipe`` itself when the world size is unchanged)."""
    saved = as_int(info["world_size"])
    recorded = info.get("global_batch")
    schedule = recipe.schedule  # type: ignore[attr-defined]
    if saved == world_size:
        return recipe
    if recorded is None:
        get_logger().warning("%s: no global batch recorded; the recipe's applies on %d ranks", where, world_size)
        return recipe
    batch = as_int(recorded)
    per_accum = schedule.micro_batch_size * world_size
    if batch % per_accum:
        raise ConfigError(
            f"{where}: global_batch={batch} (saved on {saved} ranks) cannot be kept on {world_size} ranks with"
            f" schedule.micro_batch_size={schedule.micro_batch_size}: expected a multiple of micro batch x world"
            f" size = {per_accum}"
        )
    accum = batch // per_accum
    get_logger().info(
        "elastic resume: %d -> %d ranks; schedule.grad_accum %d -> %d keeps the global batch %d"
        " (micro batch %d per rank)", saved, world_size, schedule.grad_accum, accum, batch, schedule.micro_batch_size)
    return replace(recipe, schedule=replace(schedule, grad_accum=accum))  # type: ignore[type-var]


def restore_buffers(module: nn.Module, tag_dir: Path) -> list[str]:
    """Copy the module's persistent buffers (an EMA codebook and its counts, BatchNorm statistics)
    from rank 0's model states of the universal checkpoint ``tag_dir`` (``ds_to_universal`` copies
    them there); returns their names. DeepSpeed's universal load restores parameters only (from
    ``zero/``) and leaves every buffer at its initial value."""
    params = {name for name, _ in module.named_parameters()}
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if k not in params}
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not own or not files:
        return []
    saved = as_object(as_object(safe_load.load(files[0], "checkpoint file")).get("module"))
    missing = sorted(set(own) - set(saved))
    if missing:
        raise ConfigError(f"checkpoint {tag_dir}: its model states hold no {', '.join(missing[:3])}")
    with torch.no_grad():
        for name, buf in own.items():
            value = saved[name]
            assert isinstance(value, torch.Tensor), name
            buf.copy_(value)
    return sorted(own)
