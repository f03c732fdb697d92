"""What the runtime and the tasks use of the objects that cross the task seam (``engine/task.py``),
as small structural types: the DeepSpeed engine (``TrainEngine``), a batch (``Batch``) and a
loader (``Loader``, with its ``DataReport``).

They name only the members the loop, the job, the checkpoints and the tasks call, so a fake with
those members serves in a test. A task keeps its concrete types where it knows them (its own
batch dataclass, its loader); these describe what the runtime needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

import torch
from torch import nn

B = TypeVar("B", bound="Batch")


class Batch(Protocol):
    """A micro-batch of ``len(batch)`` samples that moves to a device (its images optionally cast
    to ``dtype``) as a batch of its own type."""

    def __len__(self) -> int: ...

    def to(self: B, device: torch.device | str, dtype: torch.dtype | None = None) -> B: ...


class DataReport(Protocol):
    """What a loader counts of the files it could not read."""

    @property
    def skipped(self) -> int: ...

    def summary(self) -> str: ...

    def as_metrics(self) -> dict[str, float]: ...


class Loader(Protocol):
    """``len(loader)`` batches per epoch on this rank; ``at(epoch, start_sample)`` the batches of
    ``epoch`` from the global sample position ``start_sample``; ``report`` its skipped files."""

    @property
    def report(self) -> DataReport: ...

    def __len__(self) -> int: ...

    def at(self, epoch: int, start_sample: int = 0) -> Iterable[Batch]: ...


class TrainEngine(Protocol):
    """The DeepSpeed engine as the runtime and the tasks use it.

    ``engine(...)`` runs the wrapped ``module``'s forward (what it returns is the task's model's
    output); ``optimizer`` is DeepSpeed's optimizer (a wrapper with torch's ``param_groups``; the
    loop reads its loss scale, ``cur_scale`` or ``loss_scale``, where it has one);
    ``skipped_steps`` counts steps skipped for an fp16 overflow; ``get_global_grad_norm`` is the
    last step's gradient norm (None before the first). ``load_checkpoint`` returns the loaded
    path and the client state, ``(None, None)`` when nothing was loaded.
    """

    @property
    def module(self) -> nn.Module: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def skipped_steps(self) -> int: ...

    def __call__(self, *args: object, **kwargs: object) -> object: ...

    def backward(self, loss: torch.Tensor) -> object: ...

    def step(self) -> None: ...

    def get_global_grad_norm(self) -> float | torch.Tensor | None: ...

    def zero_optimization_stage(self) -> int: ...

    def save_checkpoint(
        self, save_dir: str, tag: str | None = ..., client_state: Mapping[str, object] = ...,
        save_latest: bool = ...,
    ) -> object: ...

    def load_checkpoint(
        self, load_dir: str, tag: str | None = ...
    ) -> tuple[str | None, dict[str, object] | None]: ...
