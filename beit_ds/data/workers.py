"""DataLoader worker processes: who owns shutdown, how their errors and hangs surface.

``scancel`` and SLURM preemption send SIGTERM to every process of the job, loader workers
included. With the default disposition the workers die, and the training process — whose
``PreemptionWatch`` only raised a flag to save at the next step — crashes on "worker killed".
Workers therefore ignore SIGTERM and SIGUSR1: the training process owns shutdown and ends its
workers itself. A worker that ignores SIGTERM must still end, whatever the order of events:

* when the training process dies (even by SIGKILL): the kernel kills it at once (Linux's parent-
  death signal, set in ``init_worker``), and torch's worker loop also checks its parent every few
  seconds;
* when its iteration ends, is closed, or is garbage-collected: ``ResumableLoader`` drops torch's
  iterator (which shuts the workers down) and then kills those still running — a worker stuck in
  a read, or one whose shutdown message was lost because the iterator was collected in a
  reference cycle, as a failing test's traceback makes it;
* when the interpreter exits with workers still running: multiprocessing's exit handler would
  send them SIGTERM (ignored) and wait for them forever, so an exit handler that runs before it
  kills them. It finds them in a registry that holds every worker's pid, recorded by the
  training process when it starts them (not by the worker, which may not have run yet), for as
  long as the worker runs — not for as long as its loader object lives.

A worker's ``DataError`` reaches torch as a copy whose message is the worker's whole traceback;
``worker_data_error`` turns it back into the one-line error.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from beit_ds.data.skips import DataError
from beit_ds.processes import die_with_parent

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # beit_ds/engine/preemption.py's

# pid of every worker started by this process and possibly still running -> the starting pid
_started: dict[int, int] = {}


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
    """The workers of one DataLoader iteration. ``starting()`` wraps the creation of torch's
    iterator and records the children it forks; ``init_worker`` is the ``worker_init_fn``."""

    def __init__(self) -> None:
        self.parent = os.getpid()
        self.pids: list[int] = []

    @contextmanager
    def starting(self) -> Iterator[None]:
        """Around ``iter(data_loader)``: signals blocked while it forks, then the new children's
        pids recorded here and in the exit registry (known before any worker has run)."""
        before = {p.pid for p in multiprocessing.active_children()}
        with signals_blocked():
            yield
        self.pids = [p.pid for p in multiprocessing.active_children() if p.pid not in before and p.pid]
        for pid in [pid for pid, parent in _started.items() if not _running_child(pid, parent)]:
            del _started[pid]
        _started.update(dict.fromkeys(self.pids, self.parent))
        # registered after multiprocessing's exit handler, so it runs before it (LIFO)
        atexit.unregister(_kill_workers_at_exit)
        atexit.register(_kill_workers_at_exit)

    def init_worker(self, worker_id: int) -> None:
        """In the worker: die with the training process, ignore SIGTERM / SIGUSR1, unblock them."""
        die_with_parent(self.parent)
        for sig in PREEMPTION_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)

    def worker_pids(self) -> list[int]:
        """Pids of this group's workers (all of them, from the moment torch's iterator exists)."""
        return list(self.pids)

    def kill_stuck(self) -> list[int]:
        """SIGKILL this group's workers that are still running; their pids. Call it once torch's
        iterator is gone (its shutdown unregisters the workers from torch's SIGCHLD check).

        Only live, unreaped children of this process are signalled, so a recycled pid is safe.
        """
        if os.getpid() != self.parent:  # a forked worker holding a copy of this object
            return []
        stuck = [pid for pid in self.pids if _running_child(pid, self.parent)]
        for pid in stuck:
            os.kill(pid, signal.SIGKILL)
        return stuck


def _kill_workers_at_exit() -> None:
    me = os.getpid()
    stuck = [pid for pid, parent in _started.items() if parent == me and _running_child(pid, me)]
    if stuck:
        # torch's SIGCHLD handler would report the killed workers as a crash of this exit
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for pid in stuck:
        os.kill(pid, signal.SIGKILL)
    _started.clear()


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
