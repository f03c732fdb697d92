"""Preemption: a signal asks for a checkpoint at the next optimizer-step boundary (issue 8).

SLURM warns a job before its time limit or a preemption (``#SBATCH --signal=B:USR1@300``, the
batch script forwards it to the tasks) and ``scancel`` / a time-out send SIGTERM. A handler
cannot checkpoint by itself — the ranks are in the middle of a step, and a ZeRO save is
collective — so it only raises a flag. The loop sums the flags over ranks at every step
boundary (together with its non-finite check, no extra collective), so every rank stops at the
same step, saves, and ``Preempted`` ends the job with exit status ``EXIT_CODE``, which
``launch/slurm/job.sh`` turns into ``scontrol requeue``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from beit_ds.logger import get_logger

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — the job script requeues on it


class Preempted(Exception):
    """Training stopped early on a preemption signal after saving a checkpoint at ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted: checkpoint saved at step {step}; resume with --resume auto")
        self.step = step


class PreemptionWatch:
    """Context manager: while active, SIGUSR1 / SIGTERM set ``requested`` instead of killing us."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

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
