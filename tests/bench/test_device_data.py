"""``bench/device_data.py`` as a smoke run on the bundled photographs (one round, one batch per call,
in-process loading for the worker path): it runs and reports each figure's key. No figure is
compared with another: timings belong in the benchmark's output, not in a test."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_reports_its_keys(tmp_path):
    cmd = [sys.executable, "bench/device_data.py", "--data", "demo", "--rounds", "1", "--warmup", "0",
           "--batches", "1", "--workers", "0", "--threads", "1", "--cache", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["data"] == "demo" and r["threads"] == 1 and r["device"] in ("cpu", "cuda:0") and r["pretrain_batch"] == 128 and r["finetune_batch"] == 64
    for kind in ("pretrain", "finetune"):
        figures = [f"{kind}_{k}" for k in ("device_img_s", "workers0_img_s", "ratio_vs_workers0", "ratio", "decode_s")]
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0 for k in figures)
    assert r["cpu"] and "device ÷ best worker path" in proc.stdout
    assert len(list(tmp_path.glob("decoded-*.npz"))) == 1  # both recipes read the one decoded demo split
