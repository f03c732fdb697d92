"""The GPU-sized CIFAR-10 study (``experiments/cifar10/gpu_study.py``): its budget's rules on made-up
measurements (cut random masking, then pixels, then epochs), its plan's runs, and (slow) every
stage with ``--tiny`` on the CPU in one process: a SIGTERM mid-way leaves partial tables, a second
invocation resumes and finishes (results with Welch verdicts, DONE markers, plots), a third skips
every run, and a budget spent at start-up stops cleanly with its tables written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import finish, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments" / "cifar10"
sys.path.insert(0, str(EXP))

from gpu_plan import Budget, Flops, Work, plan_work  # noqa: E402
from gpu_scale import TINY, Epochs, Runs  # noqa: E402


def _unit(unit: str, seconds: float) -> list[Work]:
    """Two runs of ``unit`` the budget predicts at ``seconds`` together (1 GFLOP/s, no start-up)."""
    return [Work(f"{unit}_{i}", "finetune_2k", unit, 0, 0, seconds / 2 * 1e9) for i in range(2)]


def test_budget_cuts_random_masking_first_then_pixels_then_epochs() -> None:
    budget = Budget(seconds=1000.0, reserve=100.0, rate=1e9, startup=0.0)  # ≈ 900 s left
    beit, pixels, random = _unit("beit", 400.0), _unit("pixels", 300.0), _unit("random", 300.0)
    assert budget.cuts(beit + pixels + random) == ["random"]  # 1000 s: random goes first
    assert budget.cuts(beit + _unit("pixels", 600.0) + random) == ["random", "pixels"]
    assert budget.cuts(beit + pixels) == []  # 700 s fit
    assert budget.epoch_factor(beit, []) == 1.0
    factor = budget.epoch_factor(_unit("beit", 1800.0), [])  # twice the time left: about half the epochs
    assert 0.45 < factor < 0.48  # 0.95 x 900 / 1800, less the milliseconds this test took


def test_budget_predicts_from_what_it_measured() -> None:
    budget = Budget(seconds=600.0, reserve=0.0, rate=1e12, startup=5.0)
    pretrain = Work("pretrain_pixels", "pretrain", "pixels", 1000, 1000, 4e12)
    finetune = Work("ft", "finetune_all", "pixels", 500, 500, 1e12)
    assert budget.predict(pretrain) == pytest.approx(4.0 + 5.0)  # nothing measured: the assumed rate
    budget.record("pretrain", 20.0, 2000, 2e12)  # 0.01 s per image, 1e11 FLOP/s
    assert budget.predict(pretrain) == pytest.approx(10.0)  # its kind: seconds per image
    assert budget.predict(finetune) == pytest.approx(10.0 + 5.0)  # another kind: the FLOP rate + start-up
    budget.record("test", 3.0, 0, 0.0)
    assert budget.predict(Work("test_ft", "test", "pixels", 0, 100, 1.0)) == pytest.approx(3.0)  # per run


def test_plan_lists_every_run_in_order(tmp_path: Path) -> None:
    runs = Runs(tmp_path, TINY, [], Epochs(), list(TINY.model))
    flops = Flops({"beit": (2.0, 1.0), "pixels": (2.0, 0.0), "random": (2.0, 1.0)}, (3.0, 1.0), 5.0)
    sizes = {"unlabelled": 80, "labelled": 30, "full": 60, "val": 20, "test": 20}
    work = plan_work(runs, sizes, [0, 1, 2], flops, {"2k": {"scratch": 3e-3, "beit": 1e-3}})
    names = [w.name for w in work]
    assert names[:2] == ["tokenizer", "pretrain_beit"] and names.index("pretrain_pixels") < names.index("pretrain_random")
    # 2k: scratch and beit swept at both lrs (seed 0), then seeds 1 and 2 at the chosen lr, each tested once
    assert [n for n in names if n.startswith("ft_2k_scratch")] == [
        "ft_2k_scratch_lr0.001_s0", "ft_2k_scratch_lr0.003_s0", "ft_2k_scratch_lr0.003_s1", "ft_2k_scratch_lr0.003_s2"]
    assert [n for n in names if n.startswith("test_ft_2k_pixels")] == [f"test_ft_2k_pixels_lr0.001_s{s}" for s in (0, 1, 2)]
    assert {w.unit for w in work if "scratch" in w.name} == {"beit"}  # scratch is never cut
    pre = next(w for w in work if w.name == "pretrain_beit")
    assert pre.images == 2 * 16 and pre.flop == 3.0 * 32  # TINY: 2 steps of 16, model + tokenizer FLOPs
    assert len(work) == 1 + 3 + 2 * (2 * (4 + 3) + 2 * (3 + 3))  # tokenizer, pre-training; per regime runs + tests


def test_tables_of_a_study_stopped_inside_a_pre_training_leave_that_arm_out(tmp_path: Path) -> None:
    """A SIGTERM during a pre-training, before its first logged loss: the tables are still written."""
    from gpu_table import write_gpu_results

    stopped, done = tmp_path / "pretrain_beit", tmp_path / "pretrain_pixels"
    for run in (stopped, done):
        run.mkdir()
    (stopped / "metrics.jsonl").write_text(json.dumps({"step": 0, "lr": 1e-3}) + "\n")
    (done / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 1.5 - 0.25 * s}) + "\n"
                                                for s in (1, 2)))
    (done / "DONE.json").write_text(json.dumps({"stage": "pretrain", "kind": "pretrain", "wall_s": 1.0,
                                                "images": 32, "flop": 1.0}))
    record: dict[str, object] = {"status": "stopped (SIGTERM): preempted", "elapsed_s": 60.0, "budget_s": 600.0}
    text = write_gpu_results(tmp_path, [0, 1], TINY.regimes, record)
    assert "| `pixels` | 2 | 1.0000 | — |" in text and "| `beit` |" not in text.split("### Pre-training arms")[1]
    assert json.loads((tmp_path / "study.json").read_text())["status"] == record["status"]


def _study(out: Path, cache: Path, archive: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(EXP / "gpu_study.py"), "--tiny", "--out", str(out), "--seeds", "0", "1",
           "--cache", str(cache), "--archive", str(archive), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)



@pytest.mark.slow
def test_tiny_study_stops_resumes_and_reports(tmp_path: Path, datasets_dir: Path) -> None:
    archive = datasets_dir / "cifar10" / "cifar10_jpeg.tar.gz"
    out, cache = tmp_path / "study", tmp_path / "cache"
    # a SIGTERM after the tokenizer: the study stops and writes its tables from what finished
    proc = _study(out, cache, archive)
    done = out / "tokenizer" / "DONE.json"
    assert wait_for(done.exists, 300, proc), f"{done} never appeared"
    proc.send_signal(signal.SIGTERM)
    finish(proc, rc=128 + signal.SIGTERM)
    record = json.loads((out / "study.json").read_text())
    assert record["status"].startswith("stopped (SIGTERM)") and (out / "results.md").exists()
    # the next invocation resumes and finishes
    log = finish(_study(out, cache, archive))
    assert "[tokenizer] tokenizer: done, skipped" in log
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "done" and record["cut"] == [] and record["epochs"] == {"pretrain": 1.0, "finetune": 1.0}
    lists = {s: (out / f"{s}.txt").read_text().split() for s in ("labelled", "full", "val", "test", "unlabelled")}
    assert [len(v) for v in lists.values()] == [30, 60, 20, 20, 80]
    assert set(lists["labelled"]) <= set(lists["full"]) and not set(lists["full"]) & set(lists["val"])
    sweep = json.loads((out / "sweep.json").read_text())
    for regime in ("2k", "all"):
        for arm in ("scratch", "beit", "pixels", "random"):
            lr = sweep[regime]["scratch" if arm == "scratch" else "beit"]
            for seed in (0, 1):
                run = out / f"ft_{regime}_{arm}_lr{lr:g}_s{seed}"
                assert json.loads((run / "DONE.json").read_text())["wall_s"] > 0
                assert json.loads((run / "test.json").read_text())["images"] == 20
        claims = record["claims"][regime]["claims"]
        assert [c["worse"] for c in claims] == ["scratch", "random", "pixels"]
        assert all(0 <= c["p"] <= 1 and c["verdict"] for c in claims)
    assert "target: pixels" in (out / "pretrain_pixels" / "recipe.yaml").read_text()
    assert "strategy: random" in (out / "pretrain_random" / "recipe.yaml").read_text()
    results = (out / "results.md").read_text()
    for text in ("pre-training helps", "blockwise > random masking", "visual tokens > pixel regression",
                 "Convergence on", "Budget decisions", "Wall time per stage", "GFLOP / image"):
        assert text in results
    for regime in ("2k", "all"):
        assert (out / f"cifar10_gpu_convergence_{regime}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished study re-runs nothing
    again = finish(_study(out, cache, archive))
    assert "starting" not in again and again.count("done, skipped") >= 20
    # a budget spent before the first run: a clean stop, tables written
    finish(_study(tmp_path / "late", cache, archive, "--budget-s", "1"))
    late = json.loads((tmp_path / "late" / "study.json").read_text())
    assert late["status"].startswith("stopped (deadline)") and (tmp_path / "late" / "results.md").exists()
