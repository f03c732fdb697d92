"""Where this process stands in the job: rank / world size / local rank from the environment.

The DeepSpeed launcher and torchrun set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; under SLURM
without a launcher, ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` are read instead.
A plain ``python`` process is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessPlace:
    """``rank`` of ``world_size`` processes, ``local_rank`` on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "") != "":
            return int(os.environ[name])
    return default


def place_from_env() -> ProcessPlace:
    """This process's place, read before any process group exists."""
    return ProcessPlace(
        rank=_env_int("RANK", "SLURM_PROCID", default=0),
        world_size=_env_int("WORLD_SIZE", "SLURM_NTASKS", default=1),
        local_rank=_env_int("LOCAL_RANK", "SLURM_LOCALID", default=0),
    )


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over ranks (returned as-is without a process group)."""
    if is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` as rank ``src`` has it, on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_cat(value: torch.Tensor) -> torch.Tensor:
    """Every rank's ``value`` (same shape on each) concatenated along dim 0 in rank order
    (``value`` itself without a process group)."""
    if not is_initialized():
        return value
    parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, value.contiguous())
    return torch.cat(parts)


def broadcast_(value: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``value`` overwritten in place by rank ``src``'s (unchanged without a process group)."""
    if is_initialized():
        dist.broadcast(value, src=src)
    return value
