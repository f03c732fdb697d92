"""The real ``deepspeed`` launcher with 2 CPU ranks (gloo): pre-training runs, is killed with
SIGKILL mid-run or mid-save, resumes with ``--resume auto`` and continues bit-for-bit; fp16 with
dynamic loss scaling, bf16.

Test-only patches reach the launched ranks through a ``sitecustomize.py`` on ``PYTHONPATH``
(``_HOOKS``): DeepSpeed's CPU fp16 refusal, an injected fp16 overflow, a stalled save.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from beit_ds.engine.checkpoint import verify
from tests.conftest import wait_for

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


_HOOKS = """
import os, time
from pathlib import Path
if os.environ.get("TEST_FP16_ON_CPU"):  # DeepSpeed refuses fp16 on CPU; the ZeRO-2 fp16 path itself runs
    from deepspeed.accelerator import get_accelerator
    type(get_accelerator()).is_fp16_supported = lambda self: True
if os.environ.get("TEST_OVERFLOW_AT"):  # the gradients of this optimizer step overflow fp16
    from deepspeed.runtime.engine import DeepSpeedEngine
    _backward, _at = DeepSpeedEngine.backward, int(os.environ["TEST_OVERFLOW_AT"])
    def backward(self, loss, *args, **kwargs):
        return _backward(self, loss * 1e6 if self.global_steps + 1 == _at else loss, *args, **kwargs)
    DeepSpeedEngine.backward = backward
if os.environ.get("TEST_STALL_SAVE"):  # this tag's shards are written, then the save hangs
    from deepspeed.runtime.engine import DeepSpeedEngine
    _save = DeepSpeedEngine.save_checkpoint
    def save_checkpoint(self, save_dir, tag=None, *args, **kwargs):
        out = _save(self, save_dir, tag, *args, **kwargs)
        if os.environ["TEST_STALL_SAVE"] in str(tag):  # the staging tag: .step_X.saving
            Path(save_dir).parent.joinpath("STALLED").touch()
            time.sleep(600)
        return out
    DeepSpeedEngine.save_checkpoint = save_checkpoint
"""


def _launch(
    out: Path, precision: str, extra: list[str], nproc: int = 2, hooks: dict[str, str] | None = None,
    config: str = "pretrain_demo_cpu",
) -> subprocess.Popen:
    ds = ROOT / "ds_configs" / {"fp32": "zero2_fp32_cpu.json", "bf16": "zero2_bf16.json"}.get(precision, precision)
    port = str(29500 + (os.getpid() + len(str(out))) % 2000)
    cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", port, str(ROOT / "launch/pretrain.py"),
           "--deepspeed_config", str(ds), "--config", config,
           f"checkpoint.output_dir={out}", *SMALL, *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if hooks:
        site = out.parent / "hooks"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_HOOKS)
        env.update(hooks, PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]))
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _losses(out: Path) -> dict[int, float]:
    """Loss per step; for a step logged twice (before a kill and after the resume), the last."""
    return {r["step"]: r["train/loss"] for r in _rows(out)}


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
    _tensorboard_has_the_scalars(ref, full)
    _exports_load_in_timm_and_hf(ref / "export")

    run = tmp_path / "run"
    proc = _launch(run, "fp32", ["schedule.max_steps=12"])
    wait_for(lambda: max(_losses(run), default=0) >= 6, 600, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mid-run, no clean-up
    proc.wait()
    killed_at = max(_losses(run))
    assert 6 <= killed_at < 12
    pointer = json.loads((run / "checkpoints/latest.json").read_text())
    resumed_from = int(pointer["latest"].split("_")[1])
    assert resumed_from in (4, 8)

    _wait(_launch(run, "fp32", ["schedule.max_steps=12"]), run)
    after = _losses(run)  # the resumed run's rows come last
    assert sorted(after) == list(range(1, 13))
    for step in range(resumed_from + 1, 13):
        assert after[step] == full[step], (step, after[step], full[step])


def test_two_ranks_bf16(tmp_path):
    out = tmp_path / "bf16"
    _wait(_launch(out, "bf16", ["schedule.max_steps=4"]), out)
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v for v in losses.values())


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = _launch(run, "fp32", ["schedule.max_steps=12"], hooks={"TEST_STALL_SAVE": "step_00000008"})
    wait_for(lambda: (run / "STALLED").exists(), 600, proc)
    assert (run / "STALLED").exists(), (run.parent / "run.log").read_text(errors="replace")[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # while step 8 is being saved
    proc.wait()
    first = _losses(run)
    assert max(first) == 8
    half_written = run / "checkpoints/.step_00000008.saving"  # the hidden staging folder, never published
    assert half_written.is_dir() and not (half_written / "COMPLETE.json").exists()
    assert not (run / "checkpoints/step_00000008").exists()
    assert json.loads((run / "checkpoints/latest.json").read_text())["latest"] == "step_00000004"

    _wait(_launch(run, "fp32", ["schedule.max_steps=12"]), run)
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert "resumed from " + str(run / "checkpoints/step_00000004") in log
    rows = _rows(run)
    resumed = {r["step"]: r["train/loss"] for r in rows[len(first):]}
    assert sorted(resumed) == list(range(5, 13))
    for step in range(5, 9):  # the steps redone after the lost save are the same steps
        assert resumed[step] == first[step], (step, resumed[step], first[step])
    assert (run / "checkpoints/step_00000008/COMPLETE.json").exists() and not half_written.exists()


def test_two_ranks_fp16_skips_an_overflow_and_halves_the_scale(tmp_path):
    ds = json.loads((ROOT / "ds_configs/zero2_fp16.json").read_text())
    ds["fp16"]["hysteresis"] = 1  # halve on the first overflow (the shipped 2 waits for a second)
    (tmp_path / "fp16.json").write_text(json.dumps(ds))
    out = tmp_path / "fp16"
    hooks = {"TEST_FP16_ON_CPU": "1", "TEST_OVERFLOW_AT": "3"}
    _wait(_launch(out, str(tmp_path / "fp16.json"), ["schedule.max_steps=5"], hooks=hooks), out)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["train/loss_scale"] for r in rows] == [65536.0, 65536.0, 32768.0, 32768.0, 32768.0]
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 1, 1, 1]
    assert all(r["train/loss"] == r["train/loss"] for r in rows)


def _tensorboard_has_the_scalars(out: Path, losses: dict[int, float]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/mim_accuracy", "train/lr", "train/grad_norm", "train/loss_scale",
            "train/images_per_s", "train/skipped_steps"} <= tags, tags
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(logged) == sorted(losses)
    assert all(abs(logged[k] - losses[k]) <= 1e-6 * abs(losses[k]) for k in losses)  # TB stores float32


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


def _alive(out: Path) -> list:
    import psutil

    mine = f"checkpoint.output_dir={out}"
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if mine in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("target", ["deepspeed", "deepspeed.launcher.launch"])
def test_sigterm_to_the_launcher_checkpoints_and_ends_the_ranks(tmp_path, target):
    """README's documented stop: SIGTERM to the ``deepspeed`` command. The ranks notice its exit and
    save at the next step; SIGTERM to the inner launcher reaches them as SIGTERM within its 30 s grace."""
    import psutil

    out = tmp_path / "run"
    proc = _launch(out, "fp32", ["checkpoint.save_every_steps=1000", "data.num_workers=2"])
    assert wait_for(lambda: max(_losses(out), default=0) >= 2, 300, proc), "no second step logged"
    victim = psutil.Process(proc.pid)
    if target != "deepspeed":
        victim = next(c for c in victim.children(recursive=True) if target in " ".join(c.cmdline()))
    victim.send_signal(signal.SIGTERM)
    wait_for(lambda: not _alive(out), 300)
    try:
        assert not _alive(out), "ranks left running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (out.parent / f"{out.name}.log").read_text(errors="replace")
    stops = [int(s) for s in re.findall(r"preempted: checkpoint saved at step (\d+)", log)]
    assert len(stops) == 2 and len(set(stops)) == 1, log[-4000:]  # both ranks, at the same step
    assert 2 <= stops[0] < 28
    reason = "the deepspeed launcher exited" if target == "deepspeed" else "SIGTERM"
    assert f"preemption ({reason})" in log, log[-4000:]
    assert verify(out / "checkpoints" / f"step_{stops[0]:08d}")["world_size"] == 2
