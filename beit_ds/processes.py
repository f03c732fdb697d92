"""Child processes that end with their parent, however the parent ends.

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) has the kernel send a chosen signal to
a process when the thread that forked it exits — ``kill -9`` of the parent included, which no
handler in the parent can see. It survives ``exec``, so a launcher started through ``subprocess``
keeps it. Elsewhere (macOS) it is unavailable and these functions do nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """In a child: ask for ``sig`` when the parent ``parent`` ends; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def _pre_exec(parent: int, sig: int) -> Callable[[], None]:
    return lambda: die_with_parent(parent, sig)


def run_child(cmd: Sequence[str], log: IO[Any], cwd: Path, sig: int = signal.SIGTERM) -> int:
    """Run ``cmd`` with its output in ``log``; its exit status. The child gets ``sig`` when this
    process dies (SIGTERM: a training launcher saves a checkpoint and stops), and is sent ``sig``
    and waited for when this call ends early (an exception, e.g. this process's own SIGTERM
    turned into ``SystemExit`` by ``exit_on_sigterm``)."""
    proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            preexec_fn=_pre_exec(os.getpid(), sig))
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` in this process, so ``finally`` blocks run."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 elsewhere): a time budget that
    counts from start-up, the imports included."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
