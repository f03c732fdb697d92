"""One job per run folder (engine/run_lock.py): a second job is refused with one line naming the
holder; the lock goes with its holder however it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.engine.run_lock import LOCK_NAME, RunLock
from tests.conftest import wait_for

HOLD = "import sys, time; from beit_ds.engine.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def test_a_second_job_on_the_folder_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"another job is running there \(pid {holder.pid} on ") as err:
            RunLock(tmp_path).acquire()
        assert "\n" not in str(err.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up: the kernel drops the lock
        holder.wait()
    locks: list[RunLock] = []

    def acquired() -> bool:
        try:
            locks.append(RunLock(tmp_path).acquire())
        except ConfigError:
            return False
        return True

    assert wait_for(acquired, 10)
    (lock,) = locks
    assert (tmp_path / LOCK_NAME).read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    lock.release()
    RunLock(tmp_path).acquire().release()  # released: free again


@pytest.mark.parametrize("plant, what", [("link", "a symbolic link"), ("folder", "a folder"), ("pipe", "a pipe")])
def test_a_planted_link_folder_or_pipe_is_refused_in_one_line(tmp_path: Path, plant: str, what: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    {"link": lambda: lock.symlink_to(victim), "folder": lock.mkdir, "pipe": lambda: os.mkfifo(lock)}[plant]()
    with pytest.raises(ConfigError, match=f"^{lock}: {what}") as err:
        RunLock(run).acquire()
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious"


FORK = """
import os, sys
from beit_ds.engine.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
if os.fork() == 0:  # a DataLoader worker's place: alive until the test closes its stdin
    os.write(1, f"child {os.getpid()}\\n".encode())  # one write each: the two lines never interleave
    sys.stdin.buffer.read()
    os._exit(0)
os.write(1, f"parent {os.getpid()}\\n".encode())
sys.stdin.buffer.read()
"""


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_job(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", FORK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert holder.stdout is not None
        pids = dict(holder.stdout.readline().split() for _ in range(2))  # both past the fork, either order
        child = int(pids["child"])
        with pytest.raises(ConfigError, match=rf"another job is running there \(pid {holder.pid} on "):
            RunLock(tmp_path).acquire()  # the child closing its copy left the job's lock held
        os.kill(holder.pid, signal.SIGKILL)  # kill -9 of the training process; its worker lives on
        holder.wait()
        os.kill(child, 0)  # still alive
        lock = RunLock(tmp_path).acquire()  # at once: the restart is not refused
        assert (tmp_path / LOCK_NAME).read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
