"""Bad input to the launch scripts: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

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
