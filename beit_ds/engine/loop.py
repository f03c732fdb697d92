"""The one training loop shared by pre-training, fine-tuning and tokenizer training
(house style rule 12): schedules → step function → metrics → checkpoint → stop.

A step function does one micro-batch (forward, ``engine.backward``, ``engine.step``) and returns
its scalars; the loop owns the position (``TrainState``), the schedules (pure functions of the
optimizer step), logging with throughput / ETA, non-finite handling and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from beit_ds.distributed import ProcessPlace, all_reduce_sum
from beit_ds.engine.checkpoint import CheckpointManager
from beit_ds.engine.state import TrainState
from beit_ds.logger import get_logger
from beit_ds.metrics import MetricWriter, ThroughputMeter
from beit_ds.optim import apply_schedule

StepFn = Callable[[Any, Any], dict[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for too many steps; the last good checkpoint is kept."""


@dataclass
class LoopPlan:
    """How long and how often: all in optimizer steps except ``save_every_epochs``."""

    total_steps: int
    steps_per_epoch: int
    micro_per_step: int
    samples_per_micro: int  # micro batch x world size: the global sample advance per micro-step
    lr_at: Callable[[int], float]
    wd_at: Callable[[int], float]
    log_every: int
    save_every_steps: int
    save_every_epochs: int
    max_nonfinite_steps: int
    progress_bar: bool = True


@dataclass
class LoopIO:
    """Where the loop reads and writes: loaders per (epoch, start sample), metrics, checkpoints."""

    make_loader: Callable[[int, int], Iterable[Any]]
    writer: MetricWriter
    checkpoints: CheckpointManager
    extra_state: Callable[[], dict[str, Any]]
    data_report: Callable[[], dict[str, float]] = dict


def _loss_scale(engine: Any) -> float:
    scale = getattr(engine.optimizer, "cur_scale", None)
    if scale is None:
        scale = getattr(engine.optimizer, "loss_scale", 1.0)
    return float(scale)


def _scalars(engine: Any, out: dict[str, torch.Tensor], state: TrainState, lr: float) -> dict[str, float]:
    values = {k: float(v) for k, v in out.items()}
    norm = engine.get_global_grad_norm()
    values.update(lr=lr, loss_scale=_loss_scale(engine), skipped_steps=float(engine.skipped_steps))
    values["grad_norm"] = float(norm) if norm is not None else float("nan")
    values["epoch"] = float(state.epoch)
    return values


class _Saver:
    """Saves at most once per step, never while the loss is non-finite."""

    def __init__(self, engine: Any, io: LoopIO) -> None:
        self.engine, self.io, self.last = engine, io, -1

    def __call__(self, state: TrainState) -> None:
        if state.step != self.last and state.nonfinite_steps == 0:
            self.io.checkpoints.save(self.engine, state, self.io.extra_state())
            self.last = state.step


def run_loop(
    engine: Any, step_fn: StepFn, state: TrainState, plan: LoopPlan, io: LoopIO, place: ProcessPlace
) -> TrainState:
    """Train from ``state`` until ``plan.total_steps``; returns the final state."""
    bar = tqdm(
        total=plan.total_steps,
        initial=state.step,
        disable=not (place.is_main and plan.progress_bar),
        unit="step",
        dynamic_ncols=True,
    )
    meter, save = ThroughputMeter(), _Saver(engine, io)
    epoch_samples = plan.steps_per_epoch * plan.micro_per_step * plan.samples_per_micro
    while state.step < plan.total_steps:
        micro = 0
        for batch in io.make_loader(state.epoch, state.samples_in_epoch):
            apply_schedule(engine.optimizer, plan.lr_at(state.step), plan.wd_at(state.step))
            out = step_fn(engine, batch)
            micro += 1
            state.samples_in_epoch += plan.samples_per_micro
            meter.update(plan.samples_per_micro)
            if micro % plan.micro_per_step:
                continue
            state.step += 1
            _check_finite(out["loss"], state, plan)
            if state.step % plan.log_every == 0 or state.step == plan.total_steps:
                _log(engine, out, state, plan, io, meter, bar)
            bar.update(1)
            if state.step % plan.save_every_steps == 0:
                save(state)
            if state.step >= plan.total_steps or state.samples_in_epoch >= epoch_samples:
                break
        if micro == 0:
            raise RuntimeError(f"the data loader of epoch {state.epoch} yielded no batch")
        if state.step < plan.total_steps or state.samples_in_epoch >= epoch_samples:
            # the loader ran out or the epoch's steps are done: the epoch ends either way
            state.epoch, state.samples_in_epoch = state.epoch + 1, 0
            if state.epoch % plan.save_every_epochs == 0:
                save(state)
    save(state)
    bar.close()
    io.writer.flush()
    get_logger().info("training finished at step %d (epoch %d)", state.step, state.epoch)
    return state


def _log(
    engine: Any,
    out: dict[str, torch.Tensor],
    state: TrainState,
    plan: LoopPlan,
    io: LoopIO,
    meter: ThroughputMeter,
    bar: tqdm,
) -> None:
    scalars = _scalars(engine, out, state, plan.lr_at(state.step - 1))
    scalars.update(images_per_s=meter.rate(), **io.data_report())
    meter.reset()
    io.writer.write(state.step, scalars)
    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}", refresh=False)


def _check_finite(loss: torch.Tensor, state: TrainState, plan: LoopPlan) -> None:
    bad = all_reduce_sum(torch.tensor([0.0 if math.isfinite(float(loss)) else 1.0]))
    if float(bad) == 0:
        state.nonfinite_steps = 0
        return
    state.nonfinite_steps += 1
    get_logger().warning("non-finite loss at step %d (%d in a row)", state.step, state.nonfinite_steps)
    if state.nonfinite_steps >= plan.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"loss was NaN/inf for {state.nonfinite_steps} steps in a row, up to step {state.step}: stopping;"
            " the last good checkpoint is kept"
        )
