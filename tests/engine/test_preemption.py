"""Preemption on a real single-rank engine: a signal during a step makes the loop save at the
step boundary and raise ``Preempted``; the handlers are restored afterwards."""

from __future__ import annotations

import json
import os
import signal

import pytest

from beit_ds.distributed import ProcessPlace
from beit_ds.engine.loop import run_loop
from beit_ds.engine.preemption import Preempted, PreemptionWatch
from beit_ds.engine.state import TrainState
from tests.engine.test_checkpoint import _engine
from tests.engine.test_loop import _io, _plan, _step_fn


def _signal_at(task, engine_step: int, sig: signal.Signals):
    forward = task.forward

    def step(model, batch, step):
        if model.global_steps + 1 == engine_step:
            os.kill(os.getpid(), sig)  # arrives in the middle of this optimizer step
        return forward(model, batch, step)

    task.forward = step
    return task


@pytest.mark.parametrize("sig, at, saved", [(signal.SIGUSR1, 2, 2), (signal.SIGTERM, 3, 3)])
def test_signal_saves_at_the_step_boundary_and_stops(ds_single_rank, tmp_path, sig, at, saved):
    engine = _engine(ds_single_rank)
    loaders: list = []
    io = _io(tmp_path, loaders)
    state = TrainState()
    with pytest.raises(Preempted, match=f"checkpoint saved at step {saved}; resume with --resume auto"):
        run_loop(engine, _signal_at(_step_fn(None), at, sig), state, _plan(total_steps=20, save_every_steps=100),
                 io, ProcessPlace())
    io.writer.close()
    assert signal.getsignal(sig) == signal.SIG_DFL  # restored
    assert json.loads((tmp_path / "checkpoints/latest.json").read_text())["latest"] == f"step_{saved:08d}"
    assert state.step == saved
    # step 3 ends epoch 0 (3 steps/epoch): the saved position is the start of epoch 1
    assert (state.epoch, state.samples_in_epoch) == ((1, 0) if saved == 3 else (0, 8))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, saved + 1))


def test_resume_at_the_end_of_an_epoch_starts_the_next(ds_single_rank, tmp_path):
    engine = _engine(ds_single_rank)
    loaders: list = []
    state = run_loop(engine, _step_fn(None), TrainState(step=3, samples_in_epoch=12), _plan(), _io(tmp_path, loaders),
                     ProcessPlace())
    assert loaders == [(1, 0)] and state.step == 6


def test_watch_raises_a_flag_only_while_active():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionWatch() as watch:
        assert not watch.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.requested and watch.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before
