"""``bench/vqkd_tokenizer.py`` as a smoke run (tiny models, one timed call): it runs and reports
each figure's key; the counted FLOPs of the VQ-KD encode stay within the analytic count (on the
CPU, torch's counter does not see the fused attention kernel). No timing is compared with another."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_reports_its_keys():
    proc = subprocess.run([sys.executable, "bench/vqkd_tokenizer.py", "--smoke", "--batch", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0
               for k in ("vqkd_img_s", "dalle_img_s", "ratio", "vqkd_gflop", "dalle_gflop"))
    assert 0.7 * r["vqkd_gflop_analytic"] <= r["vqkd_gflop"] <= 1.01 * r["vqkd_gflop_analytic"]  # the CPU counter may miss SDPA
    assert (r["batch"], r["vqkd_size"], r["dalle_size"]) == (2, 32, 16)
