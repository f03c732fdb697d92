"""DeepSpeed's multi-node launcher with a hostfile, as two "nodes" on this machine: two
``deepspeed --hostfile`` invocations with ``--no_ssh --node_rank 0/1`` (what each node of a
cluster without passwordless ssh runs), one CPU rank each, meeting over gloo at 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_pretrain_launcher import SMALL, _losses
from tests.e2e.test_slurm import TORCH_ENV, _free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_two_nodes_from_a_hostfile(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")  # names only label the nodes with --no_ssh
    out, port = tmp_path / "run", str(_free_ports(1)[0])
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ENV}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs = []
    for node in (0, 1):
        cmd = ["deepspeed", "--hostfile", str(hosts), "--no_ssh", "--node_rank", str(node), "--master_addr",
               "127.0.0.1", "--master_port", port, "launch/pretrain.py", "--deepspeed_config",
               "ds_configs/zero2_fp32_cpu.json", f"checkpoint.output_dir={out}", *SMALL, "schedule.max_steps=4"]
        log = open(tmp_path / f"node{node}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    logs = [(tmp_path / f"node{n}.log").read_text(errors="replace") for n in (0, 1)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for node, log in enumerate(logs):  # each launcher started one rank, of a world of 2
        assert f"node_rank={node}" in log and "dist_world_size=2" in log
    assert "pretrain: global batch 8" in logs[0]  # micro 4 x 2 ranks
    marker = json.loads((out / "checkpoints/step_00000004/COMPLETE.json").read_text())
    assert marker["world_size"] == 2 and {"rng_rank0.pt", "rng_rank1.pt"} <= marker["files"].keys()
    assert sorted(_losses(out)) == [1, 2, 3, 4]
