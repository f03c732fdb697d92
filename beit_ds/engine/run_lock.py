"""One job per run folder: an exclusive lock on ``<checkpoint.output_dir>/.run.lock``.

Two jobs started on the same output folder (a command run twice, a second ``sbatch`` of the same
script) would both write ``step_*`` folders, ``latest.json`` and the logs, each moving the other's
checkpoints aside: a silent loss of work. Rank 0 of a job holds an ``flock`` on the lock file for
the job's lifetime; a second job's rank 0 finds it held and stops with one line naming the holder
(pid and host written in the file). The kernel releases the lock when the holder exits in any way
(``kill -9`` and node failures of a local file system included), so a preempted or crashed job
never blocks its own resume; the descriptor is closed on ``exec`` and in forked children
(DataLoader workers), which would otherwise keep a killed job's lock for seconds. The lock file is
opened without following links and must be a regular file (safe_write.py). On network file systems
without ``flock`` support the lock is advisory only; the checkpoint lineage check still applies.
"""

from __future__ import annotations

import fcntl
import os
import socket
import weakref
from pathlib import Path

from beit_ds.artifacts import RunDir
from beit_ds.config import ConfigError
from beit_ds.safe_write import open_regular

LOCK_NAME = RunDir(Path()).lock.name  # the run folder's layout is artifacts.RunDir's

_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()  # the locks this process holds


def _forget_in_child() -> None:
    """After a fork, in the child: close its copy of every held lock's descriptor. ``flock`` belongs
    to the open file description, which a forked DataLoader worker shares; were the copy kept, a
    ``kill -9`` of the job would leave the lock held until the worker noticed and exited. Closing
    the child's copy does not release the parent's lock."""
    for lock in list(_HELD):
        if lock.fd is not None:
            os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class RunLock:
    """``acquire()`` or a one-line ``ConfigError``; ``release()`` (also on garbage collection)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunDir(run_dir).lock
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)  # never a planted link, folder or pipe
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"checkpoint.output_dir={str(self.path.parent)!r}: another job is running there ({holder});"
                " wait for it to end or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.release()
