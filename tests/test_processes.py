"""A launcher started by a script (the CIFAR-10 study's runs) ends with the script: SIGTERM to the
script reaches it (a training launcher then saves and stops), and a script killed outright takes
it down too (Linux's parent-death signal)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import alive, wait_for

CHILD = """
import os, signal, sys, time
def stop(signum, frame):
    print("child got", signal.Signals(signum).name, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("child", os.getpid(), flush=True)
time.sleep(600)
"""

PARENT = """
import sys
from pathlib import Path
from beit_ds.processes import exit_on_sigterm, run_child
exit_on_sigterm()
print("parent", flush=True)
with open(sys.argv[1], "a") as log:
    rc = run_child([sys.executable, "-c", sys.argv[2]], log, Path.cwd())
print("child exit", rc, flush=True)
"""


def _child_pid(log: Path) -> int | None:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return next((int(w[1]) for w in lines if len(w) == 2 and w[0] == "child"), None)


@pytest.fixture
def started(tmp_path: Path):
    log = tmp_path / "child.log"
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(log), CHILD], cwd=tmp_path, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "parent"
        assert wait_for(lambda: _child_pid(log) is not None)
        yield proc, _child_pid(log), log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        proc.wait()


@pytest.mark.timeout(300)
def test_sigterm_to_the_script_is_passed_on_and_waited_for(started):
    proc, child, log = started
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "child got SIGTERM" in log.read_text() and not alive(child)


@pytest.mark.timeout(300)
def test_a_script_killed_outright_takes_its_child_down(started):
    proc, child, log = started
    proc.kill()
    proc.wait(timeout=120)
    assert wait_for(lambda: not alive(child))
    assert "child got SIGTERM" in log.read_text()  # the launcher's own handler ran: it could save
