"""One training job on the DeepSpeed engine, whatever it trains (house style rule 12).

``run_job`` does what pre-training, fine-tuning and tokenizer training share: check the DeepSpeed
JSON against the recipe before any process group, seed, build the engine with our parameter
groups, resume, run the shared loop, export the last checkpoint. A ``JobParts`` says what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beit_ds.config import ConfigError
from beit_ds.config_io import save_yaml, to_dict
from beit_ds.distributed import ProcessPlace, place_from_env
from beit_ds.engine import elastic, integrity, resume_guard
from beit_ds.engine.checkpoint import CheckpointManager, newest_complete, read_marker
from beit_ds.engine.ds_setup import global_batch, precision_of, read_ds_config, resolve_ds_config
from beit_ds.engine.loop import LoopIO, LoopPlan, StepFn, run_loop
from beit_ds.engine.runtime import init_engine, seed_everything, torch_dtype
from beit_ds.engine.state import TrainState
from beit_ds.logger import get_logger, init_logging
from beit_ds.metrics import MetricWriter
from beit_ds.schedules import cosine, cosine_with_warmup, scaled_lr


@dataclass
class Preflight:
    """What ``preflight`` resolved: the full DeepSpeed config, precision, peak lr, global batch."""

    ds_config: dict[str, Any]
    precision: str
    lr: float
    global_batch: int


@dataclass
class JobParts:
    """What a job trains: ``kind`` (stored in checkpoints), the model, its loader for a place,
    the step function for (engine, dtype), and the export of a finished checkpoint."""

    kind: str
    build_model: Callable[[], nn.Module]
    build_loader: Callable[[ProcessPlace], Any]
    make_step: Callable[[Any, torch.dtype], StepFn]
    export: Callable[[Path, Path], list[Path]]
    # optional, main rank, after each checkpoint: (model, writer, step), e.g. sample reconstructions
    samples: Callable[[nn.Module, MetricWriter, int], None] | None = None
    # optional, every rank, after each checkpoint: (model, writer, step), e.g. validation
    evaluate: Callable[[nn.Module, MetricWriter, int], None] | None = None
    # optional: more client state saved with each checkpoint, and its restore from the loaded
    # client state (and the checkpoint folder it came from, for messages)
    client_state: Callable[[], dict[str, Any]] | None = None
    restore: Callable[[dict[str, Any], Path], None] | None = None


def loader_place(recipe: Any, place: ProcessPlace) -> Any:
    """The ``LoaderPlace`` of this rank: the recipe's micro batch and seed, the process's rank."""
    from beit_ds.data import LoaderPlace

    return LoaderPlace(recipe.schedule.micro_batch_size, place.rank, place.world_size, recipe.schedule.seed)


def preflight(recipe: Any, ds_path: str | Path, world_size: int) -> Preflight:
    """Data path, DeepSpeed JSON and batch arithmetic, checked without a process group."""
    if recipe.data.source != "demo" and not Path(recipe.data.path).exists():
        raise ConfigError(f"data.path={recipe.data.path!r}: no such file or directory")
    unwritable = integrity.probe_writable(Path(recipe.checkpoint.output_dir) / "checkpoints", "checkpoint.output_dir")
    if unwritable:
        raise ConfigError(unwritable)
    ds = read_ds_config(ds_path)
    precision = precision_of(ds, str(ds_path))
    batch = global_batch(recipe.schedule, world_size)
    o = recipe.optim
    lr = o.lr if o.lr is not None else scaled_lr(o.base_lr, o.base_batch, batch)
    resolved = resolve_ds_config(ds, recipe.schedule, o, world_size, lr, source=str(ds_path))
    return Preflight(resolved, precision, lr, batch)


def loop_plan(recipe: Any, flight: Preflight, batches_per_rank: int, world: int) -> LoopPlan:
    """Steps, warm-up + cosine lr, weight-decay schedule and cadences from the recipe."""
    s, o = recipe.schedule, recipe.optim
    steps_per_epoch = batches_per_rank // s.grad_accum
    if steps_per_epoch < 1:
        raise ConfigError(
            f"schedule.micro_batch_size={s.micro_batch_size}: an epoch has fewer samples than one global batch"
            f" ({flight.global_batch}); lower the batch or raise data.repeats"
        )
    total = s.epochs * steps_per_epoch
    warmup = int(round(s.warmup_epochs * steps_per_epoch))
    wd_end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
    return LoopPlan(
        total_steps=min(total, s.max_steps or total),
        steps_per_epoch=steps_per_epoch,
        micro_per_step=s.grad_accum,
        samples_per_micro=s.micro_batch_size * world,
        lr_at=lambda step: cosine_with_warmup(step, total, warmup, flight.lr, o.min_lr),
        wd_at=lambda step: cosine(step, total, o.weight_decay, wd_end),
        log_every=recipe.log.every_steps,
        save_every_steps=recipe.checkpoint.save_every_steps,
        save_every_epochs=recipe.checkpoint.save_every_epochs,
        max_nonfinite_steps=recipe.log.max_nonfinite_steps,
        progress_bar=recipe.log.progress_bar,
    )


def run_job(recipe: Any, ds_path: str | Path, resume: str, parts: JobParts, overwrite: bool = False) -> TrainState:
    """Train (or resume) ``parts`` as ``recipe`` says; returns the final ``TrainState``.
    ``overwrite``: allow replacing complete checkpoints of another run in the output folder."""
    place = place_from_env()
    flight = preflight(recipe, ds_path, place.world_size)
    run_dir = Path(recipe.checkpoint.output_dir)
    log = init_logging(place.rank, run_dir)
    checkpoints = CheckpointManager(run_dir, recipe.checkpoint.keep_last, place,
                                    checksums=recipe.checkpoint.verify == "checksum")
    found = checkpoints.find(resume)
    if found is not None:
        resume_guard.check_resumable(found, parts.kind, to_dict(recipe))
    lineage = resume_guard.lineage_of(read_marker(found), found) if found else resume_guard.new_lineage()
    resume_guard.guard_output(checkpoints.dir, lineage, overwrite)
    recipe, flight = _fit_to_world(recipe, flight, found, ds_path, place.world_size)
    checkpoints.global_batch = flight.global_batch  # recorded: a resume on another world size keeps it
    checkpoints.meta = {"lineage": lineage, "kind": parts.kind, "recipe": to_dict(recipe)}
    seed_everything(recipe.schedule.seed)  # identical initial weights on every rank
    engine = init_engine(parts.build_model(), recipe.optim, flight.ds_config)
    seed_everything(recipe.schedule.seed + 1000 * (place.rank + 1))  # per-rank random draws
    loader = parts.build_loader(place)
    plan = loop_plan(recipe, flight, len(loader), place.world_size)
    # built before the RNG state is restored: building it (e.g. a tokenizer's default init) may
    # draw from the global generator, which must then be where the checkpoint left it
    step_fn = parts.make_step(engine, torch_dtype(flight.precision))
    state = _resume(engine, checkpoints, found, parts.restore)
    if place.is_main:
        save_yaml(recipe, run_dir / "recipe.yaml")
    log.info("%s: global batch %d, lr %.3g, %d steps/epoch, %d steps, %s", parts.kind, flight.global_batch,
             flight.lr, plan.steps_per_epoch, plan.total_steps, flight.precision)
    writer = MetricWriter(run_dir, place.is_main, recipe.log.tensorboard)
    io = LoopIO(
        make_loader=loader.at, writer=writer, checkpoints=checkpoints,
        extra_state=lambda: {"recipe": to_dict(recipe), "kind": parts.kind,
                             **(parts.client_state() if parts.client_state else {})},
        data_report=loader.report.as_metrics,
    )
    hooks = [h for h in (parts.samples if place.is_main else None, parts.evaluate) if h is not None]
    if hooks:
        io.after_save = lambda step: [hook(engine.module, writer, step) for hook in hooks]
    try:
        state = run_loop(engine, step_fn, state, plan, io, place)
    finally:
        writer.close()
    if loader.report.skipped:
        log.warning("data: %s", loader.report.summary())
    latest = newest_complete(checkpoints.dir, checksums=False)  # written by this run moments ago
    if recipe.checkpoint.export_at_end and place.is_main and latest is not None:
        paths = parts.export(latest, run_dir / "export")
        log.info("exported %s", ", ".join(str(p) for p in paths))
    return state


def _fit_to_world(
    recipe: Any, flight: Preflight, found: Path | None, ds_path: str | Path, world_size: int
) -> tuple[Any, Preflight]:
    """A checkpoint from another world size: keep its global batch, load its universal form."""
    info = read_marker(found) if found is not None else None
    if info is None or not elastic.needs_universal(info, world_size):
        return recipe, flight
    recipe = elastic.keep_global_batch(recipe, info, world_size, f"{found}/COMPLETE.json")
    flight = preflight(recipe, ds_path, world_size)
    flight.ds_config["checkpoint"] = {**flight.ds_config.get("checkpoint", {}), "load_universal": True}
    return recipe, flight


def _resume(
    engine: Any, checkpoints: CheckpointManager, found: Path | None,
    restore: Callable[[dict[str, Any], Path], None] | None = None,
) -> TrainState:
    log = get_logger()
    if found is None:
        log.info("starting from scratch (no checkpoint in %s)", checkpoints.dir)
        return TrainState()
    state, client = checkpoints.load(engine, found)
    if restore is not None:
        restore(client, found)
    log.info("resumed from %s at step %d (epoch %d, sample %d)", found, state.step, state.epoch, state.samples_in_epoch)
    return state
