"""Tasks: what each kind of run trains, exports and evaluates, composed from models, data,
tokenizers, segmentation and pictures on the runtime of ``engine/`` (which knows no task).

This package is the one door: ``train(recipe, ...)``, ``export(source, out)`` and
``evaluate(recipe, out)`` dispatch on a recipe's or a checkpoint's ``kind`` through the registry
(``registry.py``), the only place that turns a kind into code. ``beit-ds`` (``beit_ds/cli.py``)
and every ``launch/`` script go through it.
"""

from __future__ import annotations

from pathlib import Path

from beit_ds.artifacts import RunDir
from beit_ds.distributed import place_from_env
from beit_ds.engine.checkpoint import resolve
from beit_ds.engine.job import run_job
from beit_ds.engine.saved import read_saved
from beit_ds.engine.state import TrainState
from beit_ds.recipe import TrainingRecipe
from beit_ds.safe_write import make_dir
from beit_ds.tasks.registry import MODULES, register, task_type

__all__ = ["MODULES", "evaluate", "export", "register", "task_type", "train"]


def train(recipe: TrainingRecipe, ds_config: str | Path, resume: str = "auto", overwrite: bool = False) -> TrainState:
    """Train (or resume) the task of ``recipe.kind`` on this process's place; the final ``TrainState``.
    ``overwrite``: allow replacing complete checkpoints of another run in the output folder."""
    task = task_type(recipe.kind, "recipe")(recipe, place_from_env())
    return run_job(task, ds_config, resume, overwrite)


def export(source: Path, out_dir: Path | None = None) -> list[Path]:
    """Export the checkpoint ``source`` names (a run folder, its ``checkpoints/`` or a ``step_*``
    folder) by the kind stored in it, into ``out_dir`` (default: the run's ``export/``). ``out_dir``
    (made if missing) must be a folder: anything else is a one-line ``ConfigError`` before any work."""
    tag_dir = resolve(Path(source))
    out = make_dir(out_dir if out_dir is not None else RunDir.of_checkpoint(tag_dir).export, link_ok=True)
    saved = read_saved(tag_dir)
    return task_type(saved.kind, f"checkpoint {tag_dir}").export(saved, out)


def evaluate(recipe: TrainingRecipe, out_json: Path | None = None) -> dict[str, float]:
    """Evaluate the weights ``recipe`` names, as its kind's task does (classification: top-1 /
    top-5; segmentation: mIoU / mAcc / aAcc; a checkpoint of another kind by that kind's measure)."""
    return task_type(recipe.kind, "recipe").evaluate_recipe(recipe, out_json)
