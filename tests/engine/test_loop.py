"""The shared loop on a real single-rank DeepSpeed engine: schedules applied, epochs and
checkpoints counted, persistent NaN stops the run and keeps the last good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from beit_ds.distributed import ProcessPlace
from beit_ds.engine.checkpoint import CheckpointManager
from beit_ds.engine.loop import LoopIO, NonFiniteLossError, run_loop
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.state import TrainState
from beit_ds.engine.task import StepOutput, Task
from beit_ds.metrics import MetricWriter
from tests.engine.test_checkpoint import _engine


def _plan(**kw) -> LoopPlan:
    base = dict(total_steps=6, steps_per_epoch=3, micro_per_step=1, samples_per_micro=4,
                lr_at=lambda s: 1e-3 * (s + 1), wd_at=lambda s: 0.05, log_every=1, save_every_steps=4,
                save_every_epochs=1, max_nonfinite_steps=2, progress_bar=False)
    base.update(kw)
    return LoopPlan(**base)


def _io(tmp_path, loaders: list) -> LoopIO:
    def make_loader(epoch: int, start: int):
        loaders.append((epoch, start))
        return range(4)  # 4 batches available per epoch (engine: no accumulation); the loop uses 3

    return LoopIO(make_loader, MetricWriter(tmp_path, True, tensorboard=True),
                  CheckpointManager(tmp_path, 10, ProcessPlace()), extra_state=dict)


class _LoopTask(Task):
    """A task whose forward is the debug MIM model on a batch seeded by its index; ``factor(engine)``
    scales the loss (NaN to make it non-finite)."""

    kind = "test"

    def __init__(self, factor=None) -> None:
        super().__init__(None, ProcessPlace())
        self.factor = factor

    def forward(self, model, batch, step):
        g = torch.Generator().manual_seed(int(batch))
        out = model(torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, 64, generator=g) < 0.4,
                    torch.randint(0, 32, (4, 64), generator=g))
        loss = out.loss * self.factor(model) if self.factor else out.loss
        return StepOutput(loss, {"mim_accuracy": out.accuracy})


def _step_fn(losses):
    return _LoopTask(losses)


def test_loop_counts_steps_epochs_and_applies_schedule(ds_single_rank, tmp_path):
    engine = _engine(ds_single_rank)
    loaders: list = []
    io = _io(tmp_path, loaders)
    state = run_loop(engine, _step_fn(None), TrainState(), _plan(), io, ProcessPlace())
    io.writer.close()
    assert state == TrainState(step=6, epoch=2, samples_in_epoch=0)
    assert loaders == [(0, 0), (1, 0)]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["train/lr"] == pytest.approx(1e-3) and rows[5]["train/lr"] == pytest.approx(6e-3)
    assert {"train/grad_norm", "train/images_per_s", "train/loss_scale", "train/mim_accuracy"} <= rows[0].keys()
    tags = json.loads((tmp_path / "checkpoints/latest.json").read_text())
    assert [tags["latest"], *tags["history"]] == ["step_00000006", "step_00000004", "step_00000003"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_persistent_nan_stops_and_keeps_last_good_checkpoint(ds_single_rank, tmp_path):
    engine = _engine(ds_single_rank)
    nan_from = 4  # the forward of step 5 sees 4 completed optimizer steps
    losses = lambda e: float("nan") if e.global_steps >= nan_from else 1.0  # noqa: E731
    io = _io(tmp_path, [])
    with pytest.raises(NonFiniteLossError, match="NaN/inf for 2 steps in a row, up to step 6"):
        run_loop(engine, _step_fn(losses), TrainState(), _plan(total_steps=20, save_every_steps=1), io, ProcessPlace())
    pointer = json.loads((tmp_path / "checkpoints/latest.json").read_text())
    assert pointer["latest"] == "step_00000004"  # steps 5 and 6 were non-finite: never saved


def test_fp16_dynamic_loss_scaling_skips_an_overflow(ds_single_rank, tmp_path, monkeypatch):
    # DeepSpeed refuses fp16 on CPU; patch its accelerator check (test only) to run the real
    # ZeRO-2 fp16 optimizer with dynamic loss scaling on the CPU.
    from deepspeed.accelerator import get_accelerator

    from beit_ds.config import MIMConfig
    from beit_ds.engine.ds_setup import read_ds_config, resolve_ds_config
    from beit_ds.engine.runtime import init_engine
    from beit_ds.models import build_mim_model, model_config
    from beit_ds.recipe import OptimConfig, ScheduleConfig
    from tests.engine.test_checkpoint import ROOT

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    torch.manual_seed(0)
    model = build_mim_model(model_config("beit_debug_patch4_32"), MIMConfig(vocab_size=32))
    ds = resolve_ds_config(read_ds_config(ROOT / "ds_configs/zero2_fp16.json"), ScheduleConfig(micro_batch_size=4),
                           OptimConfig(), 1, 1e-3)
    ds["fp16"]["hysteresis"] = 1  # halve on the first overflow
    ds["zero_optimization"]["overlap_comm"] = False
    engine = init_engine(model, OptimConfig(), ds)
    overflow_at = 3

    class Overflow(_LoopTask):
        def forward(self, model, batch, step):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(4, 3, 32, 32, generator=g).half()
            out = model(x, torch.rand(4, 64, generator=g) < 0.4, torch.randint(0, 32, (4, 64), generator=g))
            if step + 1 == overflow_at:  # the loss value stays, its fp16 gradients overflow to inf
                out.loss.register_hook(lambda grad: grad * 1e6)
            return StepOutput(out.loss, {"mim_accuracy": out.accuracy})

    step = Overflow()
    io = _io(tmp_path, [])
    state = run_loop(engine, step, TrainState(), _plan(total_steps=5, save_every_steps=100), io, ProcessPlace())
    io.writer.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scales = [r["train/loss_scale"] for r in rows]
    skipped = [r["train/skipped_steps"] for r in rows]
    assert scales[:2] == [65536.0, 65536.0] and scales[2:] == [32768.0] * 3  # halved at the overflow
    assert skipped == [0, 0, 1, 1, 1]
    losses = [r["train/loss"] for r in rows]
    assert losses[3] == losses[2]  # the overflowed step changed no weight (same batch every step)
    assert losses[4] < losses[3] and state.step == 5


def test_a_run_ending_on_nonfinite_steps_does_not_report_success(ds_single_rank, tmp_path):
    engine = _engine(ds_single_rank)
    losses = lambda e: float("nan") if e.global_steps >= 5 else 1.0  # noqa: E731
    io = _io(tmp_path, [])
    plan = _plan(total_steps=6, save_every_steps=1, max_nonfinite_steps=5)  # step 6 NaN, below the limit
    with pytest.raises(NonFiniteLossError, match="ended on 1 non-finite step.*last good checkpoint is step 5"):
        run_loop(engine, _step_fn(losses), TrainState(), plan, io, ProcessPlace())
    assert json.loads((tmp_path / "checkpoints/latest.json").read_text())["latest"] == "step_00000005"
