"""The real ``deepspeed`` launcher with 2 CPU ranks (gloo): pre-training runs, is killed with
SIGKILL mid-run, resumes with ``--resume auto`` and continues bit-for-bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SMALL = [
    "model.depth=2",
    "schedule.epochs=2",
    "schedule.micro_batch_size=4",
    "data.repeats=8",
    "data.num_workers=1",
    "checkpoint.save_every_steps=4",
    "log.every_steps=1",
    "log.progress_bar=false",
]


def _launch(out: Path, precision: str, extra: list[str], nproc: int = 2) -> subprocess.Popen:
    ds = ROOT / "ds_configs" / {"fp32": "zero2_fp32_cpu.json", "bf16": "zero2_bf16.json"}[precision]
    port = str(29500 + (os.getpid() + len(str(out))) % 2000)
    cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", port, str(ROOT / "launch/pretrain.py"),
           "--deepspeed_config", str(ds), "--config", "pretrain_demo_cpu",
           f"checkpoint.output_dir={out}", *SMALL, *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _losses(out: Path) -> dict[int, float]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows}


def _wait(proc: subprocess.Popen, out: Path, timeout: float = 600) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (out.parent / f"{out.name}.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]


def test_two_ranks_kill_and_resume_is_bitwise(tmp_path):
    ref = tmp_path / "ref"
    _wait(_launch(ref, "fp32", ["schedule.max_steps=12"]), ref)
    full = _losses(ref)
    assert sorted(full) == list(range(1, 13))
    assert (ref / "checkpoints/latest.json").exists() and (ref / "export/model.safetensors").exists()
    assert (ref / "tensorboard").is_dir()
    _exports_load_in_timm_and_hf(ref / "export")

    run = tmp_path / "run"
    proc = _launch(run, "fp32", ["schedule.max_steps=12"])
    deadline = time.time() + 600
    while time.time() < deadline and max(_losses(run), default=0) < 6 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mid-run, no clean-up
    proc.wait()
    killed_at = max(_losses(run))
    assert 6 <= killed_at < 12
    pointer = json.loads((run / "checkpoints/latest.json").read_text())
    resumed_from = int(pointer["latest"].split("_")[1])
    assert resumed_from in (4, 8)

    _wait(_launch(run, "fp32", ["schedule.max_steps=12"]), run)
    after = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        after[row["step"]] = row["train/loss"]  # the resumed run's rows come last
    assert sorted(after) == list(range(1, 13))
    for step in range(resumed_from + 1, 13):
        assert after[step] == full[step], (step, after[step], full[step])


def test_two_ranks_bf16(tmp_path):
    out = tmp_path / "bf16"
    _wait(_launch(out, "bf16", ["schedule.max_steps=4"]), out)
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v for v in losses.values())


def _exports_load_in_timm_and_hf(export: Path) -> None:
    import timm
    import torch
    from safetensors.torch import load_file
    from transformers import BeitModel

    from beit_ds.config_io import build_dataclass
    from beit_ds.models import build_model
    from beit_ds.recipe import PretrainRecipe

    recipe = build_dataclass(PretrainRecipe, json.loads((export / "recipe.json").read_text()))
    ours = build_model(recipe.model).eval()
    ours.load_state_dict({k: v for k, v in load_file(export / "model.safetensors").items()
                          if not k.startswith(("mask_token", "lm_head"))})
    spec = json.loads((export / "timm/timm.json").read_text())
    tm = timm.create_model(spec["model_name"], pretrained=False, **spec["kwargs"]).eval()
    tm.load_state_dict(load_file(export / "timm/model.safetensors"), strict=True)
    hf = BeitModel.from_pretrained(export / "hf").eval()
    x = torch.randn(2, 3, recipe.model.img_size, recipe.model.img_size)
    with torch.no_grad():
        feats = ours.forward_features(x)
        torch.testing.assert_close(tm.forward_features(x), feats, atol=1e-4, rtol=0)
        torch.testing.assert_close(hf(pixel_values=x).last_hidden_state, feats, atol=1e-4, rtol=0)
