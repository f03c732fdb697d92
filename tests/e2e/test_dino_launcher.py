"""MIM + DINO (seed App. E) through the real ``deepspeed`` launcher with 2 CPU ranks: trained,
killed with SIGKILL mid-run, resumed with ``--resume auto``: the losses and the EMA teacher's
weights and centre are bit-identical to an uninterrupted run; the export is the student (and,
with ``dino.export_teacher``, the teacher)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from beit_ds.engine.saved import checkpoint_client_state
from tests.conftest import wait_for
from tests.e2e.test_pretrain_launcher import _launch, _losses, _rows, _wait

pytestmark = pytest.mark.slow

DINO = ["schedule.max_steps=12", "--config", "pretrain_dino_demo_cpu"]  # after the overrides: the recipe


def _teacher(out, step: int) -> dict[str, torch.Tensor]:
    client = checkpoint_client_state(out / f"checkpoints/step_{step:08d}")
    return {**client["dino_teacher"], "center": client["dino_center"]}


def test_dino_two_ranks_kill_and_resume_is_bitwise(tmp_path):
    ref = tmp_path / "ref"
    _wait(_launch(ref, "fp32", ["dino.export_teacher=true", *DINO]), ref)
    full = _losses(ref)
    assert sorted(full) == list(range(1, 13))
    row = _rows(ref)[-1]
    assert {"train/mim_loss", "train/dino_loss", "train/mim_accuracy", "train/teacher_momentum", "train/teacher_temp",
            "train/teacher_entropy", "train/center_norm"} <= row.keys()
    for part in ("", "teacher/"):
        assert (ref / f"export/{part}model.safetensors").exists() and (ref / f"export/{part}dino_head.safetensors").exists()
        assert (ref / f"export/{part}timm/model.safetensors").exists() and (ref / f"export/{part}hf/config.json").exists()

    run = tmp_path / "run"
    proc = _launch(run, "fp32", ["dino.export_teacher=true", *DINO])
    wait_for(lambda: max(_losses(run), default=0) >= 6, 600, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mid-run
    proc.wait()
    assert 6 <= max(_losses(run)) < 12
    resumed_from = int(json.loads((run / "checkpoints/latest.json").read_text())["latest"].split("_")[1])
    assert resumed_from in (4, 8)

    _wait(_launch(run, "fp32", ["dino.export_teacher=true", *DINO]), run)
    after = _losses(run)
    assert sorted(after) == list(range(1, 13))
    for step in range(resumed_from + 1, 13):
        assert after[step] == full[step], (step, after[step], full[step])
    a, b = _teacher(ref, 12), _teacher(run, 12)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
