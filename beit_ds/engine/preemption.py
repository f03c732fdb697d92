"""Preemption: a signal asks for a checkpoint at the next optimizer-step boundary.

SLURM warns a job before its time limit or a preemption (``#SBATCH --signal=B:USR1@300``, the
batch script forwards it to the tasks) and ``scancel`` / a time-out send SIGTERM. A handler
cannot checkpoint by itself — the ranks are in the middle of a step, and a ZeRO save is
collective — so it only raises a flag. The loop sums the flags over ranks at every step
boundary (together with its non-finite check, no extra collective), so every rank stops at the
same step, saves, and ``Preempted`` ends the job with exit status ``EXIT_CODE``, which
``launch/slurm/job.sh`` turns into ``scontrol requeue``.

Which process to signal:

* **under SLURM** — ``scancel`` / preemption / ``scancel --batch --signal=USR1``: every task gets
  the signal (loader workers ignore it, see ``data/workers.py``);
* **with the ``deepspeed`` command** — SIGTERM (or SIGHUP, SIGINT) to the ``deepspeed`` command
  itself. It dies without telling its child ``deepspeed.launcher.launch``, so every rank watches
  that launcher: once it has lost its parent, the ranks stop at the next step boundary as for a
  signal, save and exit with ``EXIT_CODE``. SIGUSR1 / SIGTERM sent to the rank processes directly
  work too. Do not signal ``deepspeed.launcher.launch`` itself: it SIGKILLs the ranks 30 s later,
  which only leaves time for a small model's checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from beit_ds.logger import get_logger

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — the job script requeues on it
# what signal.signal() returns and takes: a handler, SIG_DFL / SIG_IGN, or None (set outside Python)
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class Preempted(Exception):
    """Training stopped early on a preemption signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted: checkpoint saved at step {step}; resume with --resume auto")
        self.step = step


def _parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` from ``/proc`` (None when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LauncherWatch:
    """The ``deepspeed`` command above this rank, when DeepSpeed's launcher started it: ``gone``
    once the launcher process lost that parent (the command was killed) or is gone itself."""

    def __init__(self) -> None:
        self.launch = os.getppid()
        started = "deepspeed.launcher.launch" in _cmdline(self.launch)
        self.runner = _parent_of(self.launch) if started else None

    @property
    def gone(self) -> bool:
        if self.runner is None:
            return False
        return os.getppid() != self.launch or _parent_of(self.launch) != self.runner


class PreemptionWatch:
    """Context manager: while active, SIGUSR1 / SIGTERM set ``requested`` instead of killing us;
    so does the exit of the ``deepspeed`` command that launched this rank."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self.launcher = LauncherWatch()
        self.launcher_gone = False
        self._previous: dict[signal.Signals, Handler] = {}

    @property
    def requested(self) -> bool:
        """Read once per optimizer step: a flag, and two reads of ``/proc`` under the launcher."""
        if not self.launcher_gone and self.launcher.gone:
            self.launcher_gone = True
        return self.received is not None or self.launcher_gone

    @property
    def reason(self) -> str | None:
        if self.received is not None:
            return self.received.name
        return "the deepspeed launcher exited" if self.launcher_gone or self.launcher.gone else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # no logging here: a handler may run in the middle of a logging call
        self.received = signal.Signals(signum)

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            get_logger().warning("preemption signals not watched: training runs outside the main thread")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
