"""DataLoader worker processes: who owns shutdown, how their errors and hangs surface (issue 12).

``scancel`` and SLURM preemption send SIGTERM to every process of the job, loader workers
included. With the default disposition the workers die, and the training process — whose
``PreemptionWatch`` only raised a flag to save at the next step — crashes on "worker killed".
Workers therefore ignore SIGTERM and SIGUSR1: the training process owns shutdown and ends its
workers itself. A worker still exits when the training process dies (even by SIGKILL): torch's
worker loop checks every few seconds, whenever it waits for work, that its parent is alive.

What the training process then has to do itself: kill the workers a hung read keeps from exiting
(they ignore the SIGTERM torch's shutdown sends them); kill its workers when the interpreter exits
with a loader still open — multiprocessing's exit handler would send them SIGTERM and wait for
them forever; and turn the copy of a worker's ``DataError`` that torch re-raises, whose message is
the worker's whole traceback, back into the one-line error.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from beit_ds.data.skips import DataError

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # beit_ds/engine/preemption.py's

_open_groups: weakref.WeakSet[WorkerGroup] = weakref.WeakSet()


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the preemption signals in this thread while it forks loader workers.

    A forked worker inherits the mask and unblocks only after ignoring the signals
    (``WorkerGroup.init_worker``), so a SIGTERM between fork and init cannot kill it; a signal
    this process received meanwhile is delivered to its own handler when the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkerGroup:
    """The workers of one DataLoader: ``init_worker`` is its ``worker_init_fn``, which records the
    worker's pid in shared memory, so the training process can find workers that are stuck."""

    def __init__(self, num_workers: int) -> None:
        self.parent = os.getpid()
        self.pids = multiprocessing.RawArray("q", max(num_workers, 1))
        if not _open_groups:
            # registered after multiprocessing's exit handler, so it runs before it (LIFO)
            atexit.unregister(_kill_workers_at_exit)
            atexit.register(_kill_workers_at_exit)
        _open_groups.add(self)

    def init_worker(self, worker_id: int) -> None:
        """In the worker: record the pid, ignore SIGTERM / SIGUSR1, then unblock them."""
        self.pids[worker_id] = os.getpid()
        for sig in PREEMPTION_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)

    def worker_pids(self) -> list[int]:
        """Pids of the workers started so far."""
        return [pid for pid in self.pids if pid]

    def kill_stuck(self) -> list[int]:
        """SIGKILL the workers still running after their DataLoader was shut down; their pids.

        Only live, unreaped children of this process are signalled, so a recycled pid is safe.
        """
        stuck = [pid for pid in self.worker_pids() if _running_child(pid, self.parent)]
        for pid in stuck:
            os.kill(pid, signal.SIGKILL)
        return stuck


def _kill_workers_at_exit() -> None:
    groups = [g for g in _open_groups if g.parent == os.getpid() and g.worker_pids()]
    if groups:
        # torch's SIGCHLD handler would report the killed workers as a crash of this exit
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for group in groups:
        group.kill_stuck()


def _running_child(pid: int, parent: int) -> bool:
    """Whether ``pid`` is a child of ``parent`` that has not exited (Linux ``/proc``)."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:2]
    except (OSError, ValueError):
        return False
    return state not in ("Z", "X") and int(ppid) == parent


def worker_data_error(err: DataError) -> DataError:
    """The one-line error a worker raised, from torch's copy of it.

    torch re-raises a worker's exception as ``type(err)(text)`` with ``text`` = "Caught DataError in
    DataLoader worker process 0. Original Traceback (most recent call last): ...", whose last part is
    ``beit_ds.data.skips.DataError: <message>``; an error raised in this process passes unchanged.
    """
    text = str(err)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return err
    cls = type(err)
    for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
        _, found, message = text.rpartition(f"\n{name}: ")
        if found:
            return cls(message.strip())
    return err
