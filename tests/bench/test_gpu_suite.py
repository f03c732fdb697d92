"""``bench/gpu_suite.sh --smoke`` on the CPU: the device record, the MIM step's runs (tiny model,
fp32, the real DeepSpeed engine, a batch sweep, ZeRO-2 and stage 0) with img/s and the two MFUs,
then the right-sized study (``--tiny``) with the time left, into one JSON and one markdown table.
When the deadline hits or a SIGTERM arrives, the files hold what ran and say why it stopped.
Checks what the suite reports, never how fast anything ran."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import finish, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _suite(out: Path, *extra: str) -> subprocess.Popen:
    cmd = ["bash", "bench/gpu_suite.sh", "--smoke", "--out", str(out), "--study-out", str(out.parent / "study"), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_smoke_suite_writes_one_json_and_one_table(tmp_path: Path, datasets_dir: Path) -> None:
    out = tmp_path / "suite.json"
    # a deadline no machine reaches, however loaded: what ran must not depend on how fast it ran
    finish(_suite(out, "--cache", str(tmp_path / "cache"), "--minutes", "15"))
    result = json.loads(out.read_text())
    assert result["suite"]["status"] == "done" and result["suite"]["smoke"] is True
    assert result["device"]["kind"] == "cpu" and result["device"]["peak_tflops"] > 0
    mim = result["mim"]
    assert mim["model"] == "smoke" and mim["precision"] == "fp32" and mim["sdpa_efficient_with_bias"] == "no GPU"
    assert mim["model_gflop_per_image"] > 0 and mim["tokenizer_gflop_per_image"] > 0
    assert set(mim["runs"]) == {"fp32_zero2_eager_b2", "fp32_zero2_eager_b4", "fp32_zero0_eager_b4"}
    assert set(mim["skipped"]) == {"fp32_zero2_compiled_b4", "fp32_zero0_compiled_b4"}  # compiling: minutes on a CPU
    for name, run in mim["runs"].items():
        assert run["batch"] == int(name[-1]) and abs(run["images_per_s"] * run["seconds_per_step"] - run["batch"]) < 1e-6
        assert 0 < run["model_mfu"] < run["pipeline_mfu"] == run["mfu"] < 1  # the tokenizer's FLOPs count in the pipeline's
        assert run["peak_memory_gib"] is None and run["skipped_steps"] == 0
    study = result["study"]
    assert study["rc"] == 0 and study["status"] == "done"
    assert study["budget_s"] > 0 and isinstance(study["cut"], list) and "--tiny" in study["command"]
    assert (tmp_path / "gpu_study" / "results.md").exists() and (tmp_path / "gpu_study" / "study.json").exists()
    table = out.with_suffix(".md").read_text()
    for text in ("Status: **done**", "model MFU", "pipeline MFU", "`fp32_zero0_eager_b4`", "1,550 per H100",
                 "148 img/s per GPU", "The right-sized CIFAR-10 study"):
        assert text in table


def test_deadline_leaves_partial_results(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    finish(_suite(out, "--minutes", "0.001"))  # 0.06 s from process start: past before the first run
    result = json.loads(out.read_text())
    assert result["suite"]["status"] == "stopped (deadline)" and result["suite"]["minutes"] == 0.001
    assert result["mim"]["runs"] == {} and result["study"] is None
    assert "Status: **stopped (deadline)**" in out.with_suffix(".md").read_text()


def test_sigterm_leaves_partial_results(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    proc = _suite(out, "--no-study")
    first_run = lambda: out.exists() and json.loads(out.read_text())["mim"]["runs"]  # noqa: E731
    assert wait_for(first_run, 300, proc), "no run was written"
    proc.send_signal(signal.SIGTERM)
    finish(proc, rc=128 + signal.SIGTERM)
    result = json.loads(out.read_text())
    assert result["suite"]["status"] == "stopped (SIGTERM)" and result["mim"]["runs"]
    assert "Status: **stopped (SIGTERM)**" in out.with_suffix(".md").read_text()
