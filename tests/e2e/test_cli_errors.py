"""Bad input to the launch scripts: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["optim.lrr=1"], "error: optim.lrr: unknown key"),
        (["--config", "pretrain_base_in22k"], "error: tokenizer.path='/data/dall_e/encoder.pkl': no such file"),
        (["--deepspeed_config", "missing.json"], "error: --deepspeed_config missing.json: no such file"),
        (["schedule.micro_batch_size=0"], "error: schedule.micro_batch_size=0: expected a positive integer"),
    ],
)
def test_pretrain_rejects_bad_input_with_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "launch/pretrain.py"), *args, f"checkpoint.output_dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _pretrain(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "launch/pretrain.py"), *args, f"checkpoint.output_dir={run_dir}",
           "schedule.max_steps=2", "checkpoint.save_every_steps=1", "log.progress_bar=false",
           "checkpoint.export_at_end=false"]
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(run_dir.parent / "torch_extensions"))  # an empty cache
    return subprocess.run(cmd, cwd=run_dir.parent, capture_output=True, text=True, timeout=300, env=env)


def _one_error_line(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_existing_checkpoints_are_never_lost(tmp_path):
    run = tmp_path / "run"
    first = _pretrain(run)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "shm_comm" not in first.stdout + first.stderr  # no JIT build of DeepSpeed's CPU op on a first run
    ckpt = run / "checkpoints"
    before = {p.name: (p / "COMPLETE.json").read_text() for p in ckpt.glob("step_*")}
    assert sorted(before) == ["step_00000001", "step_00000002"]
    # --resume none would restart and overwrite them: refused, nothing touched
    _one_error_line(_pretrain(run, "--resume", "none"), "holds 2 complete checkpoint(s) of another run (newest step_00000002)")
    assert {p.name: (p / "COMPLETE.json").read_text() for p in ckpt.glob("step_*")} == before
    # the pointer lost: auto still resumes the newest verified step instead of starting over
    (ckpt / "latest.json").unlink()
    proc = _pretrain(run, "schedule.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {ckpt / 'step_00000002'} at step 2" in proc.stderr
    assert (ckpt / "step_00000001" / "COMPLETE.json").read_text() == before["step_00000001"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["masking.num_masking_patches=64"], "error: masking.num_masking_patches=64: expected 1..63 for a grid (8, 8)"),
        (["masking.min_block_patches=40"], "error: masking.min_block_patches=40: expected 1..num_masking_patches"),
        (["--resume", "/no/such/run"], "error: --resume /no/such/run: no such file or directory"),
    ],
)
def test_more_bad_input_is_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "launch/pretrain.py"), *args, f"checkpoint.output_dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    _one_error_line(proc, message)


def test_an_invalid_tokenizer_file_is_one_line(tmp_path):
    junk = tmp_path / "dvae.safetensors"
    junk.write_bytes(bytes(range(256)) * 20)  # exists, but is no safetensors file
    proc = subprocess.run([sys.executable, str(ROOT / "launch/pretrain.py"), f"tokenizer.path={junk}",
                           f"checkpoint.output_dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    _one_error_line(proc, f"error: tokenizer.path='{junk}': ")
    assert "not a safetensors file" in proc.stderr
