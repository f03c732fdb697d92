"""``bench/gpu_suite.sh --smoke`` runs every configuration of the GPU suite on the CPU (tiny model,
the real DeepSpeed engine, the real JPEG loader when the shared ImageNet sample is there) and
writes one JSON with img/s, MFU and peak memory per run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT.parent / "shared/datasets/imagenet-sample-1k/imagenet_sample_334_fullsize.tar"


@pytest.mark.slow
def test_smoke_suite_writes_one_json_with_every_run(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "smoke" and result["batch"] == 4 and result["sdpa_efficient_with_bias"] == "no GPU"
    runs = result["runs"]
    expected = {"bf16_zero2_eager_synthetic", "bf16_zero0_eager_synthetic", "bf16_zero1_eager_synthetic"}
    if SAMPLE.exists():
        expected |= {"bf16_zero2_eager_loader", "bf16_zero2_eager_gpu_decode"}
    assert set(runs) == expected
    # what a CPU cannot run is named, with the reason
    assert set(result["skipped"]) == {"fp16_zero2_eager_synthetic", "bf16_zero2_compiled_synthetic"}
    for figures in runs.values():
        assert figures["images_per_s"] > 0 and 0 < figures["mfu"] < 1
        assert abs(figures["images_per_s"] * figures["seconds_per_step"] - 4) < 1e-6
        assert figures["peak_memory_gib"] is None and figures["skipped_steps"] == 0
    assert result["bf16"] == runs["bf16_zero2_eager_synthetic"] and result["mfu"] == result["bf16"]["mfu"]
    assert result["model_gflop_per_image"] > 0 and result["tokenizer_gflop_per_image"] > 0
