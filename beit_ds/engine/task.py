"""What one kind of training is: a registered, typed ``Task`` (house style rule 21; issue 13).

A task is built up front from its recipe and the process's place — one object that holds every
piece of per-run state (the tokenizer, the EMA, the classes found by the loader) — and gives the
shared job its parts:

* ``build_model()`` and ``build_loader()``;
* ``attach(engine, dtype)`` once the engine exists (before the RNG state is restored, so anything
  it draws at build time is redrawn identically on resume);
* ``forward(model, batch, step) -> StepOutput(loss, metrics)``: the loop then owns
  ``engine.backward`` and ``engine.step`` and calls ``after_optimizer_step(engine)`` at each
  optimizer-step boundary; ``step`` is ``TrainState.step``, the one clock of every schedule;
  ``schedule_optimizer(optimizer, step)`` runs before each forward, after the lr schedule;
* ``extra_state()`` / ``restore(client, tag_dir)``: more state saved with each checkpoint;
* ``evaluate`` (every rank) and ``samples`` (rank 0) after each checkpoint, when the task has them;
* ``export(tag_dir, out_dir, client)``: a class method, so ``launch/export.py`` exports any
  checkpoint by the ``kind`` stored in it, without a job.

``register`` files a task class under its ``kind``; each task module registers itself. The
registry imports no task module until a kind is looked up (``task_type``), so it has no cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from beit_ds.config import ConfigError
from beit_ds.distributed import ProcessPlace
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import TrainingRecipe

R = TypeVar("R", bound=TrainingRecipe)


@dataclass
class StepOutput:
    """One micro-batch's result: the scalar ``loss`` to back-propagate and detached scalar
    ``metrics`` (logged as means over the step's global batch, next to the loss)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(Generic[R]):
    """Base of every task; subclasses set ``kind`` and ``recipe_type`` and override what they do."""

    kind: ClassVar[str]
    recipe_type: ClassVar[type[TrainingRecipe]]
    has_evaluate: bool = False  # per run: a task may decide from its recipe
    has_samples: bool = False

    def __init__(self, recipe: R, place: ProcessPlace) -> None:
        self.recipe = recipe
        self.place = place

    def check(self) -> None:
        """Every check of the recipe that needs no process group (one-line ``ConfigError``)."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}: a task defines build_model()")

    def build_loader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: a task defines build_loader()")

    def attach(self, engine: Any, dtype: torch.dtype) -> None:
        """Called once the engine exists, before a resume restores the RNG state."""

    def forward(self, model: Any, batch: Any, step: int) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__}: a task defines forward()")

    def schedule_optimizer(self, optimizer: Any, step: int) -> None:
        """Called before each micro-batch's forward, after the loop set the lr and weight decay
        of optimizer step ``step``: the task's own changes to the optimizer's groups or state."""

    def after_optimizer_step(self, engine: Any) -> None:
        """Called after each optimizer step (e.g. an EMA update)."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def restore(self, client: dict[str, Any], tag_dir: Path) -> None:
        """Restore what ``extra_state`` saved, from a checkpoint's client state."""

    def evaluate(self, model: nn.Module, writer: MetricWriter, step: int) -> None:
        """Every rank, after each checkpoint (when ``has_evaluate``)."""

    def samples(self, model: nn.Module, writer: MetricWriter, step: int) -> None:
        """Rank 0, after each checkpoint (when ``has_samples``), e.g. reconstructions."""

    @classmethod
    def export(cls, tag_dir: Path, out_dir: Path, client: dict[str, Any]) -> list[Path]:
        """Export the checkpoint ``tag_dir`` (its client state ``client``) into ``out_dir``."""
        raise NotImplementedError(f"{cls.__name__}: a task defines export()")

    @classmethod
    def evaluate_checkpoint(cls, tag_dir: Path, client: dict[str, Any]) -> dict[str, float]:
        """This kind's evaluation of the checkpoint ``tag_dir`` on its recipe's data (rank 0)."""
        raise ConfigError(f"checkpoint {tag_dir}: a {cls.kind} checkpoint has no evaluation")


TASKS: dict[str, type[Task[Any]]] = {}
# where each kind's task registers itself: imported on the first look-up only
MODULES = {
    "pretrain": "beit_ds.engine.pretrain",
    "finetune": "beit_ds.engine.finetune",
    "linear_probe": "beit_ds.engine.finetune",
    "tokenizer": "beit_ds.engine.tokenizer_train",
    "segmentation": "beit_ds.engine.segment",
    "dino": "beit_ds.engine.dino",
}

T = TypeVar("T", bound=type[Task[Any]])


def register(cls: T) -> T:
    """Class decorator: file ``cls`` under ``cls.kind``."""
    TASKS[cls.kind] = cls
    return cls


def task_type(kind: str, where: str = "checkpoint") -> type[Task[Any]]:
    """The task class of ``kind`` (one-line ``ConfigError`` for an unknown kind)."""
    if kind not in TASKS and kind in MODULES:
        importlib.import_module(MODULES[kind])
    if kind not in TASKS:
        raise ConfigError(f"{where}: kind={kind!r}: expected one of {', '.join(sorted(MODULES))}")
    return TASKS[kind]


def hooks_after_save(task: Task[Any], place: ProcessPlace) -> list[Callable[[nn.Module, MetricWriter, int], None]]:
    """What runs after each checkpoint on this rank: samples on rank 0, evaluation on every rank."""
    hooks: list[Callable[[nn.Module, MetricWriter, int], None]] = []
    if task.has_samples and place.is_main:
        hooks.append(task.samples)
    if task.has_evaluate:
        hooks.append(task.evaluate)
    return hooks
