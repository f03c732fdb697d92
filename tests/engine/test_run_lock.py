"""One job per run folder (engine/run_lock.py): a second job is refused with one line naming the
holder; the lock goes with its holder however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.engine.run_lock import LOCK_NAME, RunLock

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
    deadline = time.time() + 10
    while True:
        try:
            lock = RunLock(tmp_path).acquire()
            break
        except ConfigError:
            assert time.time() < deadline
            time.sleep(0.1)
    assert (tmp_path / LOCK_NAME).read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    lock.release()
    RunLock(tmp_path).acquire().release()  # released: free again
