"""Masked-image-modeling pre-training (seed §2.3-2.5, §5) on the DeepSpeed engine.

``preflight`` checks the recipe, the DeepSpeed JSON and the files they name before any process
group starts; ``mim_step`` is one micro-batch (tokenize under no_grad → MIM loss → backward →
step); ``pretrain`` wires data, model, tokenizer, schedules and checkpoints into ``run_loop``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from beit_ds.config import ConfigError
from beit_ds.config_io import save_yaml, to_dict
from beit_ds.distributed import ProcessPlace, place_from_env
from beit_ds.engine.checkpoint import CheckpointManager
from beit_ds.engine.ds_setup import global_batch, precision_of, read_ds_config, resolve_ds_config
from beit_ds.engine.export import export_checkpoint
from beit_ds.engine.loop import LoopIO, LoopPlan, run_loop
from beit_ds.engine.runtime import init_engine, seed_everything, torch_dtype
from beit_ds.engine.state import TrainState
from beit_ds.logger import get_logger, init_logging
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import PretrainRecipe
from beit_ds.schedules import cosine, cosine_with_warmup, scaled_lr


@dataclass
class Preflight:
    """What ``preflight`` resolved: the full DeepSpeed config, precision, peak lr, global batch."""

    ds_config: dict[str, Any]
    precision: str
    lr: float
    global_batch: int


def _check_views(r: PretrainRecipe) -> None:
    t = r.data.transform
    if t.input_size != r.model.img_size:
        raise ConfigError(f"data.transform.input_size={t.input_size}: expected model.img_size={r.model.img_size}")
    if r.mim.target == "pixels":
        if t.second_input_size != r.model.img_size or t.tokenizer_view != "raw":
            raise ConfigError(
                "mim.target='pixels': expected data.transform.second_input_size = model.img_size"
                f" ({r.model.img_size}) and data.transform.tokenizer_view='raw'"
            )
        return
    if not r.tokenizer.path or not Path(r.tokenizer.path).is_file():
        raise ConfigError(f"tokenizer.path={r.tokenizer.path!r}: no such file (expected {r.tokenizer.name} weights)")
    if r.tokenizer.image_size != t.second_input_size:
        raise ConfigError(
            f"tokenizer.image_size={r.tokenizer.image_size}: expected data.transform.second_input_size={t.second_input_size}"
        )


def preflight(recipe: PretrainRecipe, ds_path: str | Path, world_size: int) -> Preflight:
    """Every check that needs no process group; raises ``ConfigError`` with one line."""
    _check_views(recipe)
    if recipe.data.source != "demo" and not Path(recipe.data.path).exists():
        raise ConfigError(f"data.path={recipe.data.path!r}: no such file or directory")
    ds = read_ds_config(ds_path)
    precision = precision_of(ds, str(ds_path))
    batch = global_batch(recipe.schedule, world_size)
    o = recipe.optim
    lr = o.lr if o.lr is not None else scaled_lr(o.base_lr, o.base_batch, batch)
    resolved = resolve_ds_config(ds, recipe.schedule, o, world_size, lr, source=str(ds_path))
    return Preflight(resolved, precision, lr, batch)


def mim_step(engine: Any, batch: Any, tokenizer: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One micro-batch: visual tokens (or pixels) as targets, MIM loss, backward, step."""
    batch = batch.to(engine.device, dtype)
    if tokenizer is None:
        target = batch.tokenizer_images
    else:
        with torch.no_grad():
            target = tokenizer.encode(batch.tokenizer_images)
    out = engine(batch.images, batch.bool_masked_pos, target)
    engine.backward(out.loss)
    engine.step()
    return {"loss": out.loss.detach(), "mim_accuracy": out.accuracy}


def _plan(recipe: PretrainRecipe, flight: Preflight, batches_per_rank: int, world: int) -> LoopPlan:
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


def pretrain(recipe: PretrainRecipe, ds_path: str | Path, resume: str = "auto") -> TrainState:
    """Run (or resume) pre-training; returns the final ``TrainState``."""
    from beit_ds.data import LoaderPlace, build_pretrain_loader
    from beit_ds.models import build_mim_model
    from beit_ds.tokenizers import build_tokenizer

    place = place_from_env()
    flight = preflight(recipe, ds_path, place.world_size)
    run_dir = Path(recipe.checkpoint.output_dir)
    log = init_logging(place.rank, run_dir)
    seed_everything(recipe.schedule.seed)  # identical initial weights on every rank
    model = build_mim_model(recipe.model, recipe.mim)
    model.set_grad_checkpointing(recipe.model.grad_checkpointing)
    engine = init_engine(model, recipe.optim, flight.ds_config)
    seed_everything(recipe.schedule.seed + 1000 * (place.rank + 1))  # per-rank drop-path draws
    dtype = torch_dtype(flight.precision)
    tokenizer = None
    if recipe.mim.target == "tokens":
        tokenizer = build_tokenizer(recipe.tokenizer).to(engine.device)
    loader = build_pretrain_loader(
        recipe.data, recipe.masking, recipe.model.grid_size,
        LoaderPlace(recipe.schedule.micro_batch_size, place.rank, place.world_size, recipe.schedule.seed),
    )
    plan = _plan(recipe, flight, len(loader), place.world_size)
    checkpoints = CheckpointManager(run_dir, recipe.checkpoint.keep_last, place)
    state = _resume(engine, checkpoints, resume, log)
    if place.is_main:
        save_yaml(recipe, run_dir / "recipe.yaml")
    log.info("global batch %d, lr %.3g, %d steps/epoch, %d steps, %s", flight.global_batch, flight.lr,
             plan.steps_per_epoch, plan.total_steps, flight.precision)
    writer = MetricWriter(run_dir, place.is_main, recipe.log.tensorboard)
    io = LoopIO(
        make_loader=lambda epoch, start: loader.at(epoch, start),
        writer=writer, checkpoints=checkpoints,
        extra_state=lambda: {"recipe": to_dict(recipe), "kind": "pretrain"},
        data_report=lambda: loader.report.as_metrics(),
    )
    try:
        state = run_loop(engine, lambda e, b: mim_step(e, b, tokenizer, dtype), state, plan, io, place)
    finally:
        writer.close()
    _finish(recipe, checkpoints, place, loader)
    return state


def _resume(engine: Any, checkpoints: CheckpointManager, resume: str, log: Any) -> TrainState:
    found = checkpoints.find(resume)
    if found is None:
        log.info("starting from scratch (no checkpoint in %s)", checkpoints.dir)
        return TrainState()
    state = checkpoints.load(engine, found)
    log.info("resumed from %s at step %d (epoch %d, sample %d)", found, state.step, state.epoch, state.samples_in_epoch)
    return state


def _finish(recipe: PretrainRecipe, checkpoints: CheckpointManager, place: ProcessPlace, loader: Any) -> None:
    log = get_logger()
    if loader.report.skipped:
        log.warning("data: %s", loader.report.summary())
    latest = checkpoints.find("auto")
    if recipe.checkpoint.export_at_end and place.is_main and latest is not None:
        paths = export_checkpoint(latest, Path(recipe.checkpoint.output_dir) / "export")
        log.info("exported %s", ", ".join(str(p) for p in paths))
