"""SLURM for real: a cluster of one on localhost (tests/slurm/up.sh starts munged, slurmctld and
slurmd), ``launch/slurm/train.sbatch`` submitted with 2 tasks on CPU (gloo). Skipped only
where SLURM cannot be installed or started without root."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require, wait_for
from tests.e2e.test_pretrain_launcher import SMALL, _losses

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TORCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment for SLURM clients talking to the test cluster."""
    state = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    env.update(SLURM_TEST_DIR=str(state), SLURM_TEST_PORTS=" ".join(map(str, _free_ports(2))),
               SLURM_CONF=str(state / "slurm.conf"), PYTHONUNBUFFERED="1", PATH=f"{env['PATH']}:/usr/sbin")
    up = subprocess.run(["bash", str(ROOT / "tests/slurm/up.sh")], env=env, capture_output=True, text=True, timeout=600)
    try:
        if up.returncode == 77:
            require(False, up.stderr.strip().splitlines()[-1])
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        subprocess.run(["bash", str(ROOT / "tests/slurm/down.sh")], env=env, timeout=60)


def _sbatch(env: dict, out: Path, extra: list[str], *, wait: bool) -> subprocess.CompletedProcess:
    cmd = ["sbatch", "--wait" if wait else "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
           "--cpus-per-task=1", "--time=10", f"--output={out.parent}/{out.name}-%j.out", "launch/slurm/train.sbatch",
           "--config", "pretrain_demo_cpu",
           "--deepspeed_config", "ds_configs/zero2_fp32_cpu.json", f"checkpoint.output_dir={out}", *SMALL, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _job(env: dict, job: str) -> dict[str, str]:
    line = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _job_output(out: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(out.parent.glob(f"{out.name}-*.out")))


def test_sbatch_trains_on_two_ranks(slurm, tmp_path):
    out = tmp_path / "run"
    proc = _sbatch(slurm, out, ["schedule.max_steps=4"], wait=True)
    log = _job_output(out)
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    assert re.search(r"job \d+ \(restart 0\): 2 tasks on localhost", log), log[-3000:]
    assert "pretrain: global batch 8" in log  # micro 4 x 2 ranks
    marker = json.loads((out / "checkpoints/step_00000004/COMPLETE.json").read_text())
    assert marker["world_size"] == 2 and {"rng_rank0.pt", "rng_rank1.pt"} <= marker["files"].keys()
    assert sorted(_losses(out)) == [1, 2, 3, 4]


def test_preemption_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    out = tmp_path / "run"  # 28 steps (2 epochs); checkpoints only at epoch ends unless preempted
    proc = _sbatch(slurm, out, ["checkpoint.save_every_steps=1000"], wait=False)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    assert wait_for(lambda: max(_losses(out), default=0) >= 2, 300), "no second step logged"
    # what `#SBATCH --signal=B:USR1@300` does ahead of the time limit: USR1 to the batch script
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm, check=True)
    # the requeued job starts again after cred_expire (10 s in tests/slurm/up.sh, 120 s by default)
    wait_for(lambda: _job(slurm, job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 300)
    log = _job_output(out)
    assert _job(slurm, job).get("JobState") == "COMPLETED", log[-4000:]
    assert "SIGUSR1: the tasks checkpoint and stop" in log and f"requeueing job {job}" in log, log[-4000:]
    preempted = int(re.search(r"preempted: checkpoint saved at step (\d+)", log).group(1))
    assert 2 <= preempted < 28
    assert f"job {job} (restart 1): 2 tasks" in log
    assert f"step_{preempted:08d} at step {preempted} " in (out / "train.log").read_text()
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 29))  # the requeued run continued where the checkpoint was: no step twice
    pointer = json.loads((out / "checkpoints/latest.json").read_text())
    assert pointer["latest"] == "step_00000028" and f"step_{preempted:08d}" in pointer["history"]


def test_scancel_with_loader_workers_still_checkpoints(slurm, tmp_path):
    """``scancel`` SIGTERMs every process of the job's steps, DataLoader workers included: the
    workers ignore it, the ranks save at the next step boundary and exit; nothing requeues."""
    from beit_ds.engine.checkpoint import verify

    out = tmp_path / "run"
    proc = _sbatch(slurm, out, ["checkpoint.save_every_steps=1000", "data.num_workers=2"], wait=False)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    assert wait_for(lambda: max(_losses(out), default=0) >= 2, 300), "no second step logged"
    subprocess.run(["scancel", job], env=slurm, check=True)  # SIGTERM to the batch script and every task
    def left() -> bool:  # srun, the ranks and their loader workers all name the run folder
        pgrep = ["pgrep", "-f", f"checkpoint.output_dir={out}"]
        return subprocess.run(pgrep, stdout=subprocess.DEVNULL).returncode == 0

    # the ranks (and their workers) end by themselves, not at KillWait's SIGKILL
    wait_for(lambda: not left() and _job(slurm, job).get("JobState") != "COMPLETING", 300)
    assert not left(), "processes left behind"
    log = _job_output(out)
    assert _job(slurm, job).get("JobState") == "CANCELLED", log[-4000:]
    found = re.search(r"preempted: checkpoint saved at step (\d+)", log)
    assert found, log[-4000:]
    preempted = int(found.group(1))
    assert 2 <= preempted < 28
    assert verify(out / "checkpoints" / f"step_{preempted:08d}")["world_size"] == 2
    assert "requeueing" not in log and "Traceback" not in log, log[-4000:]
