"""Loader worker processes (issue 12, items 8, 10, 12): they ignore the preemption signals but still
end with the training process, their ``DataError`` reaches the caller as one line, and workers that
deliver nothing for ``data.timeout`` seconds are a one-line error, never a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from beit_ds.data import DataError, LoaderPlace, build_finetune_loader

PLACE = LoaderPlace(batch_size=4, seed=2)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def _fingerprint(batches) -> list[tuple[list[int], float]]:
    return [(b.indices.tolist(), float(b.images.double().sum())) for b in batches]


@pytest.mark.timeout(120)
def test_sigterm_and_sigusr1_to_the_workers_change_nothing(image_tree, tiny_data):
    cfg = tiny_data(source="folder", path=str(image_tree), repeats=8)
    expected = _fingerprint(build_finetune_loader(cfg, "train", PLACE))  # loaded in-process
    loader = build_finetune_loader(
        tiny_data(**{**cfg.__dict__, "num_workers": 2, "prefetch_factor": 1}), "train", PLACE
    )
    batches = iter(loader)
    got = [next(batches)]
    pids = loader.workers.worker_pids()
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)
    assert all(_alive(p) for p in pids)
    got += list(batches)
    assert len(expected) == 12 and _fingerprint(got) == expected


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
            time.sleep(0.5)  # the workers have it too by now
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
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        for _ in batches:
            pass
    assert str(err.value).startswith("data.timeout=1: the loader workers delivered no batch for 1 s")
    assert "raise data.timeout, or 0 to wait forever" in str(err.value)
    assert time.monotonic() - start < 30  # 1 s, then torch's 5 s wait for the worker to exit
    assert _wait_gone([pid], 10)  # killed: it ignores the SIGTERM of torch's shutdown


def test_timeout_is_a_non_negative_number(tiny_data):
    assert tiny_data().timeout == 300.0 and tiny_data(timeout=0).timeout == 0
    with pytest.raises(ValueError, match=r"data.timeout=-1: expected a number >= 0"):
        tiny_data(timeout=-1)
