"""The one place that turns a kind into code: each task module files its ``Task`` class under its
``kind`` (``register``); ``task_type`` imports a kind's module on its first look-up, so the
registry itself imports no task and has no cycles."""

from __future__ import annotations

import importlib
from typing import TypeVar

from beit_ds.config import ConfigError
from beit_ds.engine.task import Task
from beit_ds.recipe import KINDS, TrainingRecipe

TASKS: dict[str, type[Task[TrainingRecipe]]] = {}
MODULES = {  # where each kind's task registers itself
    "pretrain": "beit_ds.tasks.pretrain",
    "dino": "beit_ds.tasks.dino",
    "finetune": "beit_ds.tasks.finetune",
    "linear_probe": "beit_ds.tasks.finetune",
    "segmentation": "beit_ds.tasks.segment",
    "tokenizer": "beit_ds.tasks.tokenizer",
    "vqkd": "beit_ds.tasks.vqkd",
}
assert set(MODULES) == set(KINDS), "every recipe kind has a task"

T = TypeVar("T", bound=type[Task[TrainingRecipe]])


def register(cls: T) -> T:
    """Class decorator: file ``cls`` under ``cls.kind``."""
    TASKS[cls.kind] = cls
    return cls


def task_type(kind: str, where: str = "checkpoint") -> type[Task[TrainingRecipe]]:
    """The task class of ``kind`` (one-line ``ConfigError`` for an unknown kind)."""
    if kind not in TASKS and kind in MODULES:
        importlib.import_module(MODULES[kind])
    if kind not in TASKS:
        raise ConfigError(f"{where}: kind={kind!r}: expected one of {', '.join(sorted(MODULES))}")
    return TASKS[kind]
