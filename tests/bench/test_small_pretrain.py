"""``bench/small_pretrain.py`` end to end on the bundled photographs, as a smoke run (one round,
one step per call, fp32, which every CPU runs natively): it runs and reports each figure's key.
No figure is compared with another: timings belong in the benchmark's output, not in a test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_smoke_run_reports_its_keys():
    cmd = [sys.executable, "bench/small_pretrain.py", "--data", "demo", "--threads", "1", "--clock", "thread",
           "--warmup", "0", "--repeats", "1", "--steps-per-call", "1", "--batches", "1", "--only", "job,model",
           "--bf16", "off", "--set", "schedule.micro_batch_size=8", "--set", "model.depth=1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["ds_config"] == "zero2_fp32_cpu.json" and r["batch"] == 8 and r["data"] == "demo"
    figures = ("job_img_s", "eager_img_s", "model_img_s", "ratio", "ratio_paired", "job_roofline", "matmul_gflops")
    assert all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0 for k in figures)
    assert "tokenizer_img_s" not in r  # --only keeps the named parts and the baselines
    assert set(r["skipped"]) == {"eager_bf16", "matmul_bf16"} and r["matmul_bf16_gflops"] is None
    assert "eager_bf16_img_s" not in r and "ratio_vs_eager_bf16" not in r
    assert r["model_mflop_per_image"] > 0 and r["tokenizer_mflop_per_image"] > 0
    assert "eager_bf16 skipped: --bf16 off" in proc.stdout


def test_bf16_baselines_run_where_bf16_is_native_or_when_asked():
    from small_pretrain import BF16_ONLY, bf16_skipped

    from beit_ds.engine.runtime import cpu_has_native_bf16

    assert bf16_skipped("on") == {} and set(bf16_skipped("off")) == set(BF16_ONLY)
    auto = bf16_skipped("auto")
    assert (auto == {}) == cpu_has_native_bf16()
    assert all("no native bf16" in why for why in auto.values())
