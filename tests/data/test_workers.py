"""Loader worker processes: they ignore the preemption signals but still end with the training
process and with their iteration (closed, collected, or left running at exit); their
``DataError`` reaches the caller as one line, and workers that deliver nothing for
``data.timeout`` seconds are a one-line error, never a hang."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from beit_ds.data import DataError, LoaderPlace, build_finetune_loader
from tests.conftest import alive, wait_for

PLACE = LoaderPlace(batch_size=4, seed=2)


def _wait_gone(pids: list[int], seconds: float) -> bool:
    return wait_for(lambda: not any(alive(p) for p in pids), seconds)


def _fingerprint(batches) -> list[tuple[list[int], float]]:
    return [(b.indices.tolist(), float(b.images.double().sum())) for b in batches]


def _ignores_preemption_signals(pid: int) -> bool:
    """Whether ``pid`` has set SIGTERM and SIGUSR1 to ignored (``SigIgn`` in ``/proc/<pid>/status``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return all(ignored >> (sig - 1) & 1 for sig in (signal.SIGTERM, signal.SIGUSR1))



@pytest.mark.timeout(300)
def test_sigterm_and_sigusr1_to_the_workers_change_nothing(image_tree, tiny_data):
    cfg = tiny_data(source="folder", path=str(image_tree), repeats=8)
    expected = _fingerprint(build_finetune_loader(cfg, "train", PLACE))  # loaded in-process
    loader = build_finetune_loader(
        tiny_data(**{**cfg.__dict__, "num_workers": 2, "prefetch_factor": 1}), "train", PLACE
    )
    batches = iter(loader)
    got = [next(batches)]
    pids = loader.workers.worker_pids()  # recorded when they were forked, before they ran
    assert len(pids) == 2 and all(alive(p) for p in pids)
    assert wait_for(lambda: all(_ignores_preemption_signals(p) for p in pids))
    for pid in pids:  # an ignored signal is discarded when sent: nothing to wait for
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGUSR1)
    assert all(alive(p) for p in pids)
    got += list(batches)  # a worker killed by either signal would be torch's "worker exited" error
    assert len(expected) == 12 and _fingerprint(got) == expected


@pytest.mark.timeout(300)
def test_a_signal_before_the_worker_has_started_is_ignored_too(image_tree, tiny_data):
    cfg = tiny_data(source="folder", path=str(image_tree), repeats=8, num_workers=2, prefetch_factor=1)
    loader = build_finetune_loader(cfg, "train", PLACE)
    batches = iter(loader)
    pids = loader.workers.worker_pids()  # known while the workers may not have run a line yet
    assert len(pids) == 2
    for pid in pids:  # blocked in the forked worker until it ignores the signal
        os.kill(pid, signal.SIGTERM)
    assert len(list(batches)) == 12  # a worker killed by it would be torch's "worker exited" error


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["close", "collect_cycle", "stuck"])
def test_workers_end_with_their_iteration(image_tree, tiny_data, how):
    """However an iteration ends — closed, or collected inside a reference cycle (a failing test's
    traceback), with a worker stuck — its workers end with it."""
    cfg = tiny_data(source="folder", path=str(image_tree), repeats=50, num_workers=2, prefetch_factor=1)
    loader = build_finetune_loader(cfg, "train", PLACE)
    batches = iter(loader)
    next(batches)
    pids = loader.workers.worker_pids()
    assert len(pids) == 2 and all(alive(p) for p in pids)
    if how == "stuck":
        os.kill(pids[0], signal.SIGSTOP)  # never answers torch's shutdown
    if how == "collect_cycle":
        cycle: list = [batches]
        cycle.append(cycle)
        del batches, cycle, loader
        gc.collect()
    else:
        batches.close()
    assert _wait_gone(pids, 120)


FAILING_TESTS = """
import json, os, sys
import pytest
from beit_ds.config import DataConfig, TransformConfig
from beit_ds.data import LoaderPlace, build_finetune_loader

@pytest.mark.parametrize("k", range(2))
def test_fails_while_its_loader_runs(k):
    cfg = DataConfig(source="folder", path=os.environ["TREE"], num_workers=2, prefetch_factor=1, repeats=50,
                     transform=TransformConfig(input_size=32, second_input_size=16))
    loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=2, seed=2))
    batches = iter(loader)
    next(batches)
    with open(os.environ["PIDS"], "a") as f:
        f.write(json.dumps(loader.workers.worker_pids()) + "\\n")
    assert False, "fails with its workers running"
"""


@pytest.mark.timeout(600)
def test_a_pytest_run_whose_failing_tests_left_workers_running_exits(tmp_path, image_tree):
    """The CI hang: two failing tests, each leaving a 2-worker loader mid-epoch. When the second
    fails, pytest drops the first one's traceback, and its iterator is collected in a reference
    cycle without its workers hearing of it; multiprocessing's exit handler then waited forever
    for workers that ignore its SIGTERM."""
    (tmp_path / "test_failing.py").write_text(FAILING_TESTS)
    pids_file = tmp_path / "pids.jsonl"
    env = {**os.environ, "TREE": str(image_tree), "PIDS": str(pids_file)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_failing.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1 and "2 failed" in out, out[-2000:]
    pids = [p for line in pids_file.read_text().splitlines() for p in json.loads(line)]
    assert len(pids) == 4 and _wait_gone(pids, 60)


SCANCEL = """
import json, sys, time
import torch
from beit_ds.config import DataConfig, TransformConfig
from beit_ds.data import LoaderPlace, build_finetune_loader
from beit_ds.engine.preemption import PreemptionWatch

torch.set_num_threads(1)
tiny = TransformConfig(input_size=32, second_input_size=16)
cfg = DataConfig(source="folder", path=sys.argv[1], num_workers=2, prefetch_factor=1, repeats=8, transform=tiny)
loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=4, seed=2))
batches = []
with PreemptionWatch() as watch:
    for batch in loader:
        batches.append((batch.indices.tolist(), float(batch.images.double().sum())))
        if len(batches) == 1:
            print(json.dumps(loader.workers.worker_pids()), flush=True)
            deadline = time.monotonic() + 60
            while not watch.requested and time.monotonic() < deadline:
                time.sleep(0.05)
            # killpg made the signal pending in the whole group before it returned: every batch from
            # here on comes from a worker that has already taken it
        if sys.argv[2] == "hold" and len(batches) == 2:
            print("holding", flush=True)
            time.sleep(600)
print(json.dumps({"signal": watch.received.name if watch.received else None, "batches": batches}))
"""


def _start(tmp_path: Path, image_tree: Path, mode: str) -> tuple[subprocess.Popen, list[int]]:
    script = tmp_path / "scancel.py"
    script.write_text(textwrap.dedent(SCANCEL))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(image_tree), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a SLURM job step's
    )
    return proc, json.loads(proc.stdout.readline())


@pytest.mark.timeout(180)
def test_sigterm_to_the_process_group_as_scancel_sends_it(tmp_path, image_tree, tiny_data):
    expected = _fingerprint(
        build_finetune_loader(tiny_data(source="folder", path=str(image_tree), repeats=8), "train", PLACE)
    )
    proc, pids = _start(tmp_path, image_tree, "run")
    assert len(pids) == 2 and all(os.getpgid(p) == proc.pid for p in pids)
    os.killpg(proc.pid, signal.SIGTERM)  # the training process and both workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["signal"] == "SIGTERM"  # the training process saw it, to save at the next step
    assert [(i, s) for i, s in result["batches"]] == expected  # and the workers kept loading


@pytest.mark.timeout(180)
def test_workers_end_when_the_training_process_is_killed(tmp_path, image_tree):
    proc, pids = _start(tmp_path, image_tree, "hold")
    os.killpg(proc.pid, signal.SIGUSR1)
    assert proc.stdout.readline().strip() == "holding"
    proc.kill()  # SIGKILL: no handler, no cleanup in the training process
    proc.wait(timeout=30)
    assert _wait_gone(pids, 30)  # torch's worker loop notices its parent is gone


@pytest.mark.timeout(120)
def test_a_data_error_in_a_worker_is_the_same_one_line_error(tmp_path, tiny_data):
    (tmp_path / "bad" / "a").mkdir(parents=True)
    for n in range(20):
        (tmp_path / "bad" / "a" / f"{n:02d}.jpg").write_bytes(b"")
    messages = []
    for workers in (0, 2):
        cfg = tiny_data(
            source="folder", path=str(tmp_path / "bad"), num_workers=workers, max_skip_fraction=1.0
        )
        with pytest.raises(DataError) as err:
            list(build_finetune_loader(cfg, "eval", LoaderPlace(batch_size=4)))
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[1].startswith("17 images in a row failed to load (empty: ")
    assert "\n" not in messages[1] and "Traceback" not in messages[1]


@pytest.mark.timeout(120)
def test_workers_that_deliver_nothing_for_the_timeout_are_a_one_line_error(image_tree, tiny_data):
    cfg = tiny_data(
        source="folder", path=str(image_tree), repeats=50, num_workers=1, prefetch_factor=1, timeout=1
    )
    loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=2))
    batches = iter(loader)
    next(batches)
    (pid,) = loader.workers.worker_pids()
    os.kill(pid, signal.SIGSTOP)  # a read that never returns, as on a stalled network mount
    with pytest.raises(DataError) as err:
        for _ in batches:
            pass
    assert str(err.value).startswith("data.timeout=1: the loader workers delivered no batch for 1 s")
    assert "raise data.timeout, or 0 to wait forever" in str(err.value)
    assert _wait_gone([pid], 10)  # killed: it ignores the SIGTERM of torch's shutdown


def test_timeout_is_a_non_negative_number(tiny_data):
    assert tiny_data().timeout == 300.0 and tiny_data(timeout=0).timeout == 0
    with pytest.raises(ValueError, match=r"data.timeout=-1: expected a number >= 0"):
        tiny_data(timeout=-1)
