"""``bench/small_pretrain.py`` end to end on the bundled photographs (a smoke run: one round, one
step per call): the job on a bf16 config against the fp32 and bf16-autocast eager loops, each
roofline share against the matmul rate of its own precision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_reports_ratios_and_rooflines_per_precision():
    cmd = [sys.executable, "bench/small_pretrain.py", "--data", "demo", "--threads", "1", "--clock", "thread",
           "--warmup", "0", "--repeats", "1", "--steps-per-call", "1", "--batches", "1", "--only", "job,model",
           "--ds-config", "ds_configs/zero0_bf16.json", "--set", "schedule.micro_batch_size=16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ds_config"] == "zero0_bf16.json" and r["batch"] == 16 and r["data"] == "demo"
    assert {"job_img_s", "eager_img_s", "eager_bf16_img_s", "model_img_s"} <= r.keys()
    assert "tokenizer_img_s" not in r  # --only keeps the named parts and the baselines
    assert r["ratio"] == pytest.approx(r["job_img_s"] / r["eager_img_s"], rel=0.02)
    assert r["ratio_vs_eager_bf16"] == pytest.approx(r["job_img_s"] / r["eager_bf16_img_s"], rel=0.02)
    flop = (r["model_mflop_per_image"] + r["tokenizer_mflop_per_image"]) * 1e6
    assert r["job_roofline"] == pytest.approx(flop * r["job_img_s"] / (r["matmul_bf16_gflops"] * 1e9), rel=0.03)
    assert r["eager_roofline"] == pytest.approx(flop * r["eager_img_s"] / (r["matmul_gflops"] * 1e9), rel=0.03)
    assert r["model_roofline"] == pytest.approx(
        r["model_mflop_per_image"] * 1e6 * r["model_img_s"] / (r["matmul_gflops"] * 1e9), rel=0.03)
