"""One training job on the DeepSpeed engine, whatever it trains.

``run_job`` does what every ``Task`` shares: check the recipe, the DeepSpeed JSON and the output
folder before any process group, seed, build the engine with our parameter groups, resume, run
the shared loop, export the last checkpoint. The task (``engine/task.py``) says what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

from beit_ds.artifacts import RunDir
from beit_ds.config import ConfigError
from beit_ds.config_io import check_derived, save_yaml, to_dict
from beit_ds.distributed import ProcessPlace
from beit_ds.engine import elastic, integrity, resume_guard
from beit_ds.engine.checkpoint import CheckpointManager, newest_complete, read_marker
from beit_ds.engine.ds_setup import ds_section, global_batch, precision_of, read_ds_config, resolve_ds_config
from beit_ds.engine.loop import LoopIO, run_loop
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Loader, TrainEngine
from beit_ds.engine.run_lock import RunLock
from beit_ds.engine.runtime import bf16_hint, cpu_has_native_bf16, init_engine, seed_everything, torch_dtype
from beit_ds.engine.saved import read_saved
from beit_ds.engine.state import TrainState
from beit_ds.engine.task import Task, hooks_after_save
from beit_ds.logger import get_logger, init_logging
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import TrainingRecipe
from beit_ds.safe_write import make_dir
from beit_ds.schedules import cosine, cosine_with_warmup, linear_with_warmup, scaled_lr

if TYPE_CHECKING:
    from beit_ds.data import LoaderPlace

R = TypeVar("R", bound=TrainingRecipe)


@dataclass
class Preflight:
    """What ``preflight`` resolved: the full DeepSpeed config, precision, peak lr, global batch."""

    ds_config: dict[str, object]
    precision: str
    lr: float
    global_batch: int


def loader_place(recipe: TrainingRecipe, place: ProcessPlace) -> LoaderPlace:
    """The ``LoaderPlace`` of this rank: the recipe's micro batch and seed, the process's rank."""
    from beit_ds.data import LoaderPlace

    return LoaderPlace(recipe.schedule.micro_batch_size, place.rank, place.world_size, recipe.schedule.seed)


def preflight(recipe: TrainingRecipe, ds_path: str | Path, world_size: int) -> Preflight:
    """Derived values, data path, output folder, DeepSpeed JSON and batch arithmetic, checked
    without a process group."""
    check_derived(recipe)
    if recipe.data.source != "demo" and not Path(recipe.data.path).exists():
        raise ConfigError(f"data.path={recipe.data.path!r}: no such file or directory")
    unwritable = integrity.probe_writable(RunDir(recipe.checkpoint.output_dir).checkpoints, "checkpoint.output_dir")
    if unwritable:
        raise ConfigError(unwritable)
    ds = read_ds_config(ds_path)
    precision = precision_of(ds, str(ds_path))
    batch = global_batch(recipe.schedule, world_size)
    o = recipe.optim
    lr = o.lr if o.lr is not None else scaled_lr(o.base_lr, o.base_batch, batch)
    resolved = resolve_ds_config(ds, recipe.schedule, o, world_size, lr, source=str(ds_path))
    return Preflight(resolved, precision, lr, batch)


def loop_plan(recipe: TrainingRecipe, flight: Preflight, batches_per_rank: int, world: int) -> LoopPlan:
    """Steps, warm-up + cosine lr, weight-decay schedule and cadences from the recipe."""
    s, o = recipe.schedule, recipe.optim
    steps_per_epoch = batches_per_rank // s.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"schedule.micro_batch_size={s.micro_batch_size}: an epoch has fewer samples than one global batch"
            f" ({flight.global_batch}); lower the batch or raise data.repeats"
        )
    total = s.steps if s.steps is not None else s.epochs * steps_per_epoch
    warmup = s.warmup_steps if s.warmup_steps is not None else int(round(s.warmup_epochs * steps_per_epoch))
    wd_end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
    shape = linear_with_warmup if s.decay == "linear" else cosine_with_warmup
    return LoopPlan(
        total_steps=min(total, s.max_steps or total),
        steps_per_epoch=steps_per_epoch,
        micro_per_step=s.grad_accum,
        samples_per_micro=s.micro_batch_size * world,
        lr_at=lambda step: shape(step, total, warmup, flight.lr, o.min_lr),
        wd_at=lambda step: cosine(step, total, o.weight_decay, wd_end),
        log_every=recipe.log.every_steps,
        save_every_steps=recipe.checkpoint.save_every_steps,
        save_every_epochs=recipe.checkpoint.save_every_epochs,
        max_nonfinite_steps=recipe.log.max_nonfinite_steps,
        progress_bar=recipe.log.progress_bar,
        schedule_steps=total,
    )


@dataclass
class _Opened:
    """A run folder taken by this job: its lock, checkpoints, what to resume and the resolved setup."""

    run_dir: RunDir
    lock: RunLock | None
    checkpoints: CheckpointManager
    found: Path | None
    flight: Preflight


def run_job(task: Task[TrainingRecipe], ds_path: str | Path, resume: str, overwrite: bool = False) -> TrainState:
    """Train (or resume) ``task`` as its recipe says; returns the final ``TrainState``.
    ``overwrite``: allow replacing complete checkpoints of another run in the output folder."""
    task.check()
    run = _open(task, ds_path, resume, overwrite)
    recipe, place, flight = task.recipe, task.place, run.flight
    seed_everything(recipe.schedule.seed)  # identical initial weights on every rank
    engine = init_engine(task.build_model(), recipe.optim, flight.ds_config)
    seed_everything(recipe.schedule.seed + 1000 * (place.rank + 1))  # per-rank random draws
    loader = task.build_loader()
    plan = loop_plan(recipe, flight, len(loader), place.world_size)
    # before the RNG state is restored: attaching (e.g. a tokenizer's default init) may draw from
    # the global generator, which must then be where the checkpoint left it
    task.attach(engine, torch_dtype(flight.precision), plan)
    state = _resume(engine, run.checkpoints, run.found, task)
    if place.is_main:
        save_yaml(recipe, run.run_dir.recipe)
    _log_start(task, flight, plan)
    state = _train(task, engine, loader, plan, run, state)
    latest = newest_complete(run.checkpoints.dir, checksums=False)  # written by this run moments ago
    if recipe.checkpoint.export_at_end and place.is_main and latest is not None:
        paths = type(task).export(read_saved(latest), make_dir(run.run_dir.export))
        get_logger().info("exported %s", ", ".join(str(p) for p in paths))
    if run.lock is not None:
        run.lock.release()
    return state


def _open(task: Task[TrainingRecipe], ds_path: str | Path, resume: str, overwrite: bool) -> _Opened:
    """Checks without a process group, the run lock, logging, and the checkpoint to resume (same
    kind, architecture and optimizer layout; lineage; world size)."""
    recipe, place = task.recipe, task.place
    flight = preflight(recipe, ds_path, place.world_size)
    run_dir = RunDir(recipe.checkpoint.output_dir)
    lock = RunLock(run_dir.root).acquire() if place.is_main else None  # one job per folder (released at exit)
    init_logging(place.rank, run_dir.root)
    checkpoints = CheckpointManager(run_dir.root, recipe.checkpoint.keep_last, place,
                                    checksums=recipe.checkpoint.verify == "checksum")
    found = checkpoints.find(resume)
    layout = resume_guard.optimizer_layout(flight.ds_config, flight.precision)
    if found is not None:
        resume_guard.check_resumable(found, task.kind, to_dict(recipe), layout)
    lineage = resume_guard.lineage_of(read_marker(found), found) if found else resume_guard.new_lineage()
    resume_guard.guard_output(checkpoints.dir, lineage, overwrite)
    task.recipe, flight = _fit_to_world(recipe, flight, found, ds_path, place.world_size)
    checkpoints.global_batch = flight.global_batch  # recorded: a resume on another world size keeps it
    # kind and recipe are stored once per checkpoint: in its COMPLETE.json
    checkpoints.meta = {"lineage": lineage, "kind": task.kind, "recipe": to_dict(task.recipe), "optimizer": layout}
    return _Opened(run_dir, lock, checkpoints, found, flight)


def _log_start(task: Task[TrainingRecipe], flight: Preflight, plan: LoopPlan) -> None:
    log = get_logger()
    log.info("%s: global batch %d, lr %.3g, %d steps/epoch, %d steps, %s", task.kind, flight.global_batch,
             flight.lr, plan.steps_per_epoch, plan.total_steps, flight.precision)
    hint = bf16_hint(flight.precision, torch.cuda.is_available(), cpu_has_native_bf16())
    if hint and task.place.is_main:
        log.info(hint)


def _train(
    task: Task[TrainingRecipe], engine: TrainEngine, loader: Loader, plan: LoopPlan, run: _Opened, state: TrainState
) -> TrainState:
    """The shared loop with this task's checkpoint state and after-save hooks; the data report."""
    writer = MetricWriter(run.run_dir.root, task.place.is_main, task.recipe.log.tensorboard)
    io = LoopIO(make_loader=loader.at, writer=writer, checkpoints=run.checkpoints, extra_state=task.extra_state,
                data_report=loader.report.as_metrics)
    hooks = hooks_after_save(task, task.place)
    if hooks:
        io.after_save = lambda step: _run_hooks(hooks, engine.module, writer, step)
    try:
        state = run_loop(engine, task, state, plan, io, task.place)
    finally:
        writer.close()
    if loader.report.skipped:
        get_logger().warning("data: %s", loader.report.summary())
    return state


def _run_hooks(hooks: list[Callable[[nn.Module, MetricWriter, int], None]], model: nn.Module,
               writer: MetricWriter, step: int) -> None:
    for hook in hooks:
        hook(model, writer, step)


def _fit_to_world(
    recipe: R, flight: Preflight, found: Path | None, ds_path: str | Path, world_size: int
) -> tuple[R, Preflight]:
    """A checkpoint from another world size: keep its global batch, load its universal form."""
    info = read_marker(found) if found is not None else None
    if info is None or not elastic.other_world(info, world_size):
        return recipe, flight
    recipe = elastic.keep_global_batch(recipe, info, world_size, f"{found}/COMPLETE.json")
    flight = preflight(recipe, ds_path, world_size)
    if elastic.needs_universal(info, world_size):  # ZeRO shards; a stage-0 checkpoint loads as it is
        flight.ds_config["checkpoint"] = {**ds_section(flight.ds_config, "checkpoint"), "load_universal": True}
    return recipe, flight


def _resume(
    engine: TrainEngine, checkpoints: CheckpointManager, found: Path | None, task: Task[TrainingRecipe]
) -> TrainState:
    log = get_logger()
    if found is None:
        log.info("starting from scratch (no checkpoint in %s)", checkpoints.dir)
        return TrainState()
    state, client = checkpoints.load(engine, found)
    task.restore(client, found)
    log.info("resumed from %s at step %d (epoch %d, sample %d)", found, state.step, state.epoch, state.samples_in_epoch)
    return state
