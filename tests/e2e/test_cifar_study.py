"""The CIFAR-10 study (``experiments/cifar10/study.py``, docs/RESULTS.md) end to end on a tiny slice:
every stage through the real launchers (3 labelled / 2 val / 2 test images per class, a 2-block model,
a few steps, seed 0; the spread over seeds and Welch's test are the GPU study's tiny run's and
``test_verdicts_follow_welch_t_test``'s), then the resume contract: a second invocation skips every
finished run, and a run whose last checkpoint and DONE marker are gone resumes from its earlier
checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments" / "cifar10" / "study.py"
pytestmark = pytest.mark.slow


def _study(out: Path, cache: Path, archive: Path, *stages: str) -> str:
    cmd = [sys.executable, str(STUDY), *stages, "--tiny", "--out", str(out), "--seeds", "0",
           "--cache", str(cache), "--archive", str(archive)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_study_end_to_end_and_resume(tmp_path: Path, datasets_dir: Path) -> None:
    archive = datasets_dir / "cifar10" / "cifar10_jpeg.tar.gz"
    out, cache = tmp_path / "study", tmp_path / "cache"
    log = _study(out, cache, archive)
    assert "== done" in log
    # lists: class-balanced and disjoint (labelled / val from train, test from test)
    lists = {s: (out / f"{s}.txt").read_text().split() for s in ("labelled", "val", "test")}
    assert [len(v) for v in lists.values()] == [30, 20, 20]
    assert not set(lists["labelled"]) & set(lists["val"])
    assert all("/train/" in x for x in lists["labelled"] + lists["val"]) and all("/test/" in x for x in lists["test"])
    # every fine-tuning arm x seed was evaluated on the 20 test images; val after each of 2 epochs
    sweep = json.loads((out / "sweep.json").read_text())
    for seed in (0,):
        for arm in ("scratch", "long", "short", "random", "pixels", "all"):
            lr = sweep["scratch" if arm == "scratch" else "long"]
            run = out / f"ft_{arm}_lr{lr:g}_s{seed}"
            test = json.loads((run / "test.json").read_text())
            assert test["images"] == 20 and 0 <= test["top1"] <= 100
            vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert len({r["step"] for r in vals if "val/top1" in r}) == 2
            assert json.loads((run / "DONE.json").read_text())["wall_s"] > 0
    # the pixel arm regressed pixels (no tokenizer), the others predicted tokens
    assert "target: pixels" in (out / "pretrain_pixels" / "recipe.yaml").read_text()
    assert "target: tokens" in (out / "pretrain_long" / "recipe.yaml").read_text()
    assert "strategy: random" in (out / "pretrain_random" / "recipe.yaml").read_text()
    assert "predict_all: true" in (out / "pretrain_all" / "recipe.yaml").read_text()
    # probes: every block of `long` and of random weights, then the best val block
    best = json.loads((out / "probe.json").read_text())["best_block"]
    assert best in (1, 2)
    for init in ("long", "random"):
        for block in (1, 2):
            assert (out / f"probe_{init}_b{block}_s0" / "DONE.json").exists()
    assert json.loads((out / f"probe_random_b{best}_s0" / "test.json").read_text())["images"] == 20
    # the tables and plots
    results = (out / "results.md").read_text()
    for claim in ("pre-training helps", "blockwise > random masking", "visual tokens > pixel regression",
                  "masked positions only > all positions", "longer pre-training > shorter",
                  "pre-trained features > random", "Wall time per stage"):
        assert claim in results
    for png in ("cifar10_convergence.png", "cifar10_probe_blocks.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resume: a finished study re-runs nothing ...
    again = _study(out, cache, archive, "lists", "tokenizer", "pretrain", "sweep", "finetune", "probe")
    assert "starting" not in again and again.count("done, skipped") == 28  # the lists and every run
    # ... and a run killed after its first checkpoint continues from it
    short = out / "pretrain_short"
    (short / "DONE.json").unlink()
    shutil.rmtree(short / "checkpoints" / "step_00000002")
    (short / "checkpoints" / "latest.json").unlink()
    again = _study(out, cache, archive, "pretrain")
    assert again.count("starting") == 1 and "pretrain_short: finished" in again
    assert "resumed from" in (out / "pretrain_short.log").read_text()
    assert (short / "checkpoints" / "step_00000002").is_dir()


def test_verdicts_follow_welch_t_test() -> None:
    sys.path.insert(0, str(STUDY.parent))
    import table  # experiments/cifar10/table.py

    diff, p, verdict = table.compare([33.0, 32.9, 33.1], [32.0, 32.2, 31.9])
    assert abs(diff - 0.9667) < 1e-3 and p < 0.01 and verdict == "**holds**"  # t = 9.2, Welch df ≈ 3.5
    diff, p, verdict = table.compare([32.0, 32.2, 31.9], [33.0, 32.9, 33.1])
    assert diff < 0 and p < 0.01 and verdict.startswith("**reversed**")
    diff, p, verdict = table.compare([31.0, 33.0, 32.0], [31.5, 32.5, 31.0])  # spread 1 point, gap 0.33
    assert 0.5 < p < 1 and verdict == "same direction, within noise"
    assert table.compare([30.0], [29.0])[2].startswith("undecided")
