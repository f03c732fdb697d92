"""The one training loop shared by every task (house style rules 12 and 21): schedules →
``task.forward`` → ``engine.backward`` → ``engine.step`` → metrics → checkpoint → stop.

A task's ``forward`` computes one micro-batch's ``StepOutput`` (loss + detached metrics); the loop
owns backward and step, the position (``TrainState``, whose ``step`` is the one clock every
schedule reads), logging with throughput / ETA, non-finite handling, preemption and checkpoints.
The hot path has no host synchronisation per micro-step: scalars are summed on the device and
read once per logged step; the non-finite flag is computed on the device and travels in the one
all-reduce per optimizer step that also carries the preemption flag.
Logged step scalars are means over the step's global batch (all micro-batches of all ranks), so
they compare across world sizes and accumulation settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from beit_ds.distributed import ProcessPlace, all_reduce_sum
from beit_ds.engine.checkpoint import CheckpointManager
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.preemption import Preempted, PreemptionWatch
from beit_ds.engine.protocols import Batch, TrainEngine
from beit_ds.engine.state import TrainState
from beit_ds.engine.task import Task
from beit_ds.logger import get_logger
from beit_ds.metrics import MetricWriter, ThroughputMeter
from beit_ds.optim import apply_schedule
from beit_ds.recipe import TrainingRecipe


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for too many steps; the last good checkpoint is kept."""


@dataclass
class LoopIO:
    """Where the loop reads and writes: loaders per (epoch, start sample), metrics, checkpoints."""

    make_loader: Callable[[int, int], Iterable[Batch]]
    writer: MetricWriter
    checkpoints: CheckpointManager
    extra_state: Callable[[], dict[str, object]]
    data_report: Callable[[], dict[str, float]] = dict
    after_save: Callable[[int], None] = lambda step: None  # e.g. sample images at the saved step


def _loss_scale(engine: TrainEngine) -> float:
    scale = getattr(engine.optimizer, "cur_scale", None)
    if scale is None:
        scale = getattr(engine.optimizer, "loss_scale", None)
    return 1.0 if scale is None else float(scale)


class _Saver:
    """Saves at most once per step, never while the loss is non-finite; ``last`` is the saved step."""

    def __init__(self, engine: TrainEngine, io: LoopIO, step: int) -> None:
        self.engine, self.io, self.last = engine, io, step

    def __call__(self, state: TrainState) -> None:
        if state.step != self.last and state.nonfinite_steps == 0:
            self.io.checkpoints.save(self.engine, state, self.io.extra_state())
            self.last = state.step
            self.io.after_save(state.step)


@dataclass
class _Run:
    """What one epoch of the loop works with."""

    engine: TrainEngine
    task: Task[TrainingRecipe]
    plan: LoopPlan
    io: LoopIO
    place: ProcessPlace
    save: _Saver
    meter: ThroughputMeter
    bar: tqdm
    watch: PreemptionWatch


def run_loop(
    engine: TrainEngine, task: Task[TrainingRecipe], state: TrainState, plan: LoopPlan, io: LoopIO,
    place: ProcessPlace,
) -> TrainState:
    """Train from ``state`` until ``plan.total_steps``; returns the final state. On a preemption
    signal (any rank) every rank saves at the same step boundary and ``Preempted`` is raised."""
    bar = tqdm(total=plan.total_steps, initial=state.step, disable=not (place.is_main and plan.progress_bar),
               unit="step", dynamic_ncols=True)
    with PreemptionWatch() as watch:
        run = _Run(engine, task, plan, io, place, _Saver(engine, io, state.step), ThroughputMeter(), bar, watch)
        while state.step < plan.total_steps:
            if state.samples_in_epoch >= plan.epoch_samples:  # saved at the last step of an epoch
                state.epoch, state.samples_in_epoch = state.epoch + 1, 0
            if _train_epoch(run, state) and state.step < plan.total_steps:
                run.save(state)
                bar.close()
                io.writer.flush()
                sig = watch.reason or "a signal on another rank"
                get_logger().warning("preemption (%s): stopped at step %d", sig, state.step)
                raise Preempted(run.save.last)
        run.save(state)
    bar.close()
    io.writer.flush()
    if state.nonfinite_steps:  # the last steps' weights are not trustworthy: no success, no export
        raise NonFiniteLossError(
            f"training ended on {state.nonfinite_steps} non-finite step(s) (up to step {state.step}); the last good"
            f" checkpoint is step {run.save.last}: nothing was exported"
        )
    get_logger().info("training finished at step %d (epoch %d)", state.step, state.epoch)
    return state


def _train_epoch(run: _Run, state: TrainState) -> bool:
    """Steps of ``state.epoch`` from its position; True when stopped early by a preemption signal."""
    plan, io = run.plan, run.io
    micro, stop = 0, False
    sums: dict[str, torch.Tensor] = {}
    engine, task = run.engine, run.task
    for batch in io.make_loader(state.epoch, state.samples_in_epoch):
        apply_schedule(engine.optimizer, plan.lr_at(state.step), plan.wd_at(state.step))
        task.schedule_optimizer(engine.optimizer, state.step)
        out = task.forward(engine, batch, state.step)
        engine.backward(out.loss)
        engine.step()
        loss = out.loss.detach()
        for key, value in {"loss": loss, **out.metrics}.items():
            value = value.detach().float().reshape(())
            sums[key] = sums[key] + value if key in sums else value
        micro += 1
        state.samples_in_epoch += plan.samples_per_micro
        run.meter.update(plan.samples_per_micro)
        if micro % plan.micro_per_step:
            continue
        state.step += 1
        task.after_optimizer_step(engine, state.step - 1)
        stop = _step_boundary(loss, state, plan, run.watch)
        if state.step % plan.log_every == 0 or state.step == plan.total_steps:
            _log(run, _global_means(sums, plan, run.place), state)
        sums = {}
        run.bar.update(1)
        if state.step % plan.save_every_steps == 0:
            run.save(state)
        if stop or state.step >= plan.total_steps or state.samples_in_epoch >= plan.epoch_samples:
            break
    if micro == 0:
        raise RuntimeError(f"the data loader of epoch {state.epoch} yielded no batch")
    if state.samples_in_epoch >= plan.epoch_samples or (not stop and state.step < plan.total_steps):
        # the loader ran out or the epoch's steps are done: the epoch ends either way
        state.epoch, state.samples_in_epoch = state.epoch + 1, 0
        if state.epoch % plan.save_every_epochs == 0:
            run.save(state)
    return stop


def _global_means(sums: dict[str, torch.Tensor], plan: LoopPlan, place: ProcessPlace) -> dict[str, float]:
    """Each step scalar averaged over the step's micro-batches on all ranks (one all-reduce)."""
    totals = all_reduce_sum(torch.stack(list(sums.values())))
    return {k: float(v) / (plan.micro_per_step * place.world_size) for k, v in zip(sums, totals)}


def _log(run: _Run, means: dict[str, float], state: TrainState) -> None:
    engine, plan = run.engine, run.plan
    norm = engine.get_global_grad_norm()
    scalars = dict(means, lr=plan.lr_at(state.step - 1), loss_scale=_loss_scale(engine),
                   skipped_steps=float(engine.skipped_steps), epoch=float(state.epoch))
    scalars["grad_norm"] = float(norm) if norm is not None else float("nan")
    scalars.update(images_per_s=run.meter.rate(), **run.io.data_report())
    run.meter.reset()
    run.io.writer.write(state.step, scalars)
    run.bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}", refresh=False)


def _step_boundary(loss: torch.Tensor, state: TrainState, plan: LoopPlan, watch: PreemptionWatch) -> bool:
    """Agree over ranks (one all-reduce) on a non-finite loss and on a preemption request;
    returns True when every rank is to stop at this step."""
    nonfinite = (~torch.isfinite(loss.float())).float().reshape(1)
    flags = torch.cat([nonfinite, torch.tensor([float(watch.requested)], device=loss.device)])
    bad, stop = all_reduce_sum(flags).tolist()  # the one read of the step: after the collective
    if bad == 0:
        state.nonfinite_steps = 0
        return stop > 0
    state.nonfinite_steps += 1
    get_logger().warning("non-finite loss at step %d (%d in a row)", state.step, state.nonfinite_steps)
    if state.nonfinite_steps >= plan.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"loss was NaN/inf for {state.nonfinite_steps} steps in a row, up to step {state.step}: stopping;"
            " the last good checkpoint is kept"
        )
    return stop > 0
