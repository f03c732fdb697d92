"""Shared fixtures: the debug preset, seeded RNG, the read-only shared datasets folder, and a
victim file for the tests that plant links in a run folder.

A skip is not a pass: in CI (``CI=true``) a missing reference package, shared dataset or system
tool that a test needs fails the test instead of skipping it (``require``).
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"


_INDUCTOR_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Each test session compiles into its own, new Inductor cache (unless TORCHINDUCTOR_CACHE_DIR
    is set). A shared ``/tmp/torchinductor_<user>`` is reused across runs, CPUs and environments
    (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``) that its keys do not tell apart; a kernel
    loaded from it once returned uninitialised memory and aborted a test run."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="beit_ds_tests_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        config.stash[_INDUCTOR_CACHE] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_INDUCTOR_CACHE, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) unless ``ok``: ``what`` names the missing piece."""
    if not ok:
        (pytest.fail if IN_CI else pytest.skip)(f"{what} (CI=true: a missing test dependency fails)")


def require_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``; a reference package that fails to import skips only outside CI."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        require(False, f"reference package {name!r} does not import ({err}); pip install -e '.[dev]'")
        raise


@pytest.fixture
def datasets_dir() -> Path:
    """``../shared/datasets`` next to the checkout (skipped locally, a failure in CI, when absent)."""
    require(
        DATASETS.is_dir(), f"shared datasets not found at {DATASETS} (only present on the project's machines)"
    )
    return DATASETS


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """``elsewhere/victim.txt`` holding ``precious``: a file outside a run folder, for links planted
    there to point at (it must never change)."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text("precious")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ds_single_rank():
    """A real single-rank DeepSpeed process group (gloo, CPU) for in-process engine and task tests,
    started as the product starts it (``init_distributed``: no JIT build of DeepSpeed's CPU
    shared-memory op, which training never uses and which costs minutes on a fresh machine)."""
    import deepspeed
    import torch.distributed as dist

    from beit_ds.engine.runtime import init_distributed

    if not dist.is_initialized():
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
            os.environ.setdefault(key, value)
        init_distributed()
    return deepspeed


def finish(proc: subprocess.Popen, rc: int = 0, timeout: float = 600) -> str:
    """The combined output of ``proc`` once it exits (killed if it outlives ``timeout``), asserting
    its exit status is ``rc``."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == rc, out[-4000:]
    return str(out)


def wait_for(condition: Callable[[], object], seconds: float = 120, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` pass or ``proc`` exits (False): wait
    for what a test asserts on, with a deadline far beyond any machine's speed, never a fixed sleep."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return bool(condition())
        time.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
