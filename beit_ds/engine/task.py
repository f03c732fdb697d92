"""What one kind of training is, as the runtime sees it: a typed ``Task``.

A task is built up front from its recipe and the process's place — one object that holds every
piece of per-run state (the tokenizer, the EMA, the classes found by the loader) — and gives the
shared job its parts:

* ``build_model()`` and ``build_loader()``;
* ``attach(engine, dtype, plan)`` once the engine exists (before the RNG state is restored, so
  anything it draws at build time is redrawn identically on resume); ``plan`` is the run's clock
  (steps per epoch, the steps every schedule spans): no task derives it again;
* ``forward(model, batch, step) -> StepOutput(loss, metrics)``: the loop then owns
  ``engine.backward`` and ``engine.step``; ``step`` is ``TrainState.step``, the one clock of every
  schedule; ``schedule_optimizer(optimizer, step)`` runs before each forward, after the lr
  schedule, and ``after_optimizer_step(engine, step)`` after the optimizer step ``step``;
* ``extra_state()`` / ``restore(client, tag_dir)``: more state saved with each checkpoint;
* ``evaluate`` (every rank) and ``samples`` (rank 0) after each checkpoint, when the task has them;
* ``export(saved, out_dir)`` and ``evaluate_checkpoint(saved)``: class methods, so a checkpoint is
  exported or evaluated by the ``kind`` stored in it, without a job; ``evaluate_recipe(recipe,
  out_json)`` evaluates the weights a recipe of this kind names; ``load_exported(export, ema)``
  rebuilds the model of an export folder whose manifest names this kind.

The runtime knows no task: ``beit_ds.tasks`` registers them under their kinds and is the one
place that turns a kind into code. What crosses the seam is typed by ``engine/protocols.py``
(``TrainEngine``, ``Batch``, ``Loader``); a task narrows a batch to its own type. ``Task`` is
covariant in its recipe, so ``Task[TrainingRecipe]`` is any task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import torch
from torch import nn

from beit_ds.artifacts import ExportDir
from beit_ds.config import ConfigError
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, Loader, TrainEngine
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import TrainingRecipe

R_co = TypeVar("R_co", bound=TrainingRecipe, covariant=True)  # a task only reads its recipe
R = TypeVar("R", bound=TrainingRecipe)


@dataclass
class StepOutput:
    """One micro-batch's result: the scalar ``loss`` to back-propagate and detached scalar
    ``metrics`` (logged as means over the step's global batch, next to the loss)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(Generic[R_co]):
    """Base of every task; subclasses set ``kind`` and ``recipe_type`` and override what they do.
    ``backbone_prefix``: where the pre-trained model sits in this kind's checkpoint weights (what
    ``finetune.init`` of such a checkpoint loads)."""

    kind: ClassVar[str]
    recipe_type: ClassVar[type[TrainingRecipe]]
    backbone_prefix: ClassVar[str] = ""
    has_evaluate: bool = False  # per run: a task may decide from its recipe
    has_samples: bool = False

    def __init__(self, recipe: R_co, place: ProcessPlace) -> None:
        self.recipe = recipe
        self.place = place

    def check(self) -> None:
        """Every check of the recipe that needs no process group (one-line ``ConfigError``)."""

    def check_saved(self) -> None:
        """The checks an export or evaluation of this task's checkpoint needs: ``check()`` unless a
        task's training needs more than its checkpoint does (a teacher, say)."""
        self.check()

    def build_model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}: a task defines build_model()")

    def build_loader(self) -> Loader:
        raise NotImplementedError(f"{type(self).__name__}: a task defines build_loader()")

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        """Called once the engine exists, before a resume restores the RNG state."""

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__}: a task defines forward()")

    def schedule_optimizer(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Called before each micro-batch's forward, after the loop set the lr and weight decay
        of optimizer step ``step``: the task's own changes to the optimizer's groups or state."""

    def after_optimizer_step(self, engine: TrainEngine, step: int) -> None:
        """Called after optimizer step ``step`` (the number its forwards received), e.g. an EMA update."""

    def extra_state(self) -> dict[str, object]:
        return {}

    def restore(self, client: Mapping[str, object], tag_dir: Path) -> None:
        """Restore what ``extra_state`` saved, from a checkpoint's client state."""

    def evaluate(self, model: nn.Module, writer: MetricWriter, step: int) -> None:
        """Every rank, after each checkpoint (when ``has_evaluate``)."""

    def samples(self, model: nn.Module, writer: MetricWriter, step: int) -> None:
        """Rank 0, after each checkpoint (when ``has_samples``), e.g. reconstructions."""

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        """Export the checkpoint ``saved`` into ``out_dir``."""
        raise NotImplementedError(f"{cls.__name__}: a task defines export()")

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> nn.Module:
        """The model the export folder ``export`` of this kind holds (``ema``: its averaged
        weights), rebuilt from its ``recipe.json``, in eval mode."""
        raise ConfigError(f"{export.path}: a {cls.kind} export cannot be loaded as a model")

    @classmethod
    def evaluate_checkpoint(cls, saved: SavedCheckpoint) -> dict[str, float]:
        """This kind's evaluation of the checkpoint ``saved`` on its recipe's data (rank 0)."""
        raise ConfigError(f"checkpoint {saved.tag_dir}: a {cls.kind} checkpoint has no evaluation")

    @classmethod
    def evaluate_recipe(cls: type[Task[R]], recipe: R, out_json: Path | None) -> dict[str, float]:
        """Evaluate the weights ``recipe`` names (``finetune.init``) on its evaluation data, every
        rank taking a share; the numbers also as JSON in ``out_json``."""
        raise ConfigError(f"kind={cls.kind!r}: a recipe of this kind names no weights to evaluate; evaluate a"
                          " checkpoint (beit-ds evaluate <checkpoint>) or give a fine-tuning recipe")


def hooks_after_save(
    task: Task[TrainingRecipe], place: ProcessPlace
) -> list[Callable[[nn.Module, MetricWriter, int], None]]:
    """What runs after each checkpoint on this rank: samples on rank 0, evaluation on every rank."""
    hooks: list[Callable[[nn.Module, MetricWriter, int], None]] = []
    if task.has_samples and place.is_main:
        hooks.append(task.samples)
    if task.has_evaluate:
        hooks.append(task.evaluate)
    return hooks
