"""The intermediate fine-tuning chain (seed §3.1, App. B) with the real ``deepspeed`` launcher and
2 CPU ranks (gloo), on tiny data: pre-train → fine-tune on a "22K" stand-in (the 14 bundled
photographs) → fine-tune on a "1K" stand-in with another class count (7 of them, a folder tree; the
head is re-initialised) → ``launch/evaluate.py`` of the result on 2 ranks, which must reproduce the
last validation numbers of the fine-tuning run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TINY = [
    "model.depth=2",
    "schedule.micro_batch_size=4",
    "data.repeats=2",
    "data.num_workers=0",
    "log.every_steps=1",
    "log.progress_bar=false",
    "log.tensorboard=false",
]


def _run(script: str, args: list[str], log: Path, timeout: float = 300) -> str:
    port = str(29500 + (os.getpid() + len(script) + len(str(log))) % 2000)
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", port, str(ROOT / "launch" / script), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def _stand_in_1k(tmp_path: Path) -> Path:
    """7 classes, one photograph each: a class-per-folder tree."""
    from beit_ds.data.demo import DEMO_PHOTOS, demo_folder

    root = tmp_path / "in1k_stand_in"
    for name, file in DEMO_PHOTOS[:7]:
        (root / name).mkdir(parents=True)
        shutil.copy(demo_folder() / file, root / name / file)
    return root


def _val(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val/top1" in r]


def test_pretrain_then_22k_then_1k_then_evaluate(tmp_path):
    ds = ["--deepspeed_config", str(ROOT / "ds_configs/zero2_fp32_cpu.json")]
    pre, ft22k, ft1k = tmp_path / "pretrain", tmp_path / "ft22k", tmp_path / "ft1k"
    _run(
        "pretrain.py",
        [*ds, *TINY, "schedule.max_steps=2", f"checkpoint.output_dir={pre}"],
        tmp_path / "pre.log",
    )
    log = _run(
        "finetune.py",
        [
            *ds,
            "--config",
            "finetune_demo_cpu",
            *TINY,
            "schedule.max_steps=2",
            f"finetune.init={pre}",
            f"checkpoint.output_dir={ft22k}",
        ],
        tmp_path / "ft22k.log",
    )
    assert "newly initialised: fc_norm.bias, fc_norm.weight, head.bias, head.weight" in log
    images = _stand_in_1k(tmp_path)
    log = _run(
        "finetune.py",
        [
            *ds,
            "--config",
            "finetune_demo_cpu",
            *TINY,
            "schedule.max_steps=3",
            "data.source=folder",
            f"data.path={images}",
            "model.num_classes=7",
            f"finetune.init={ft22k}",
            f"checkpoint.output_dir={ft1k}",
        ],
        tmp_path / "ft1k.log",
    )
    assert "newly initialised: head.bias, head.weight" in log  # 14 -> 7 classes: a new head, the rest kept
    last = _val(ft1k)[-1]
    assert last["step"] == 3 and last["val/images"] == 7  # both ranks' shares counted once
    assert (ft1k / "export/model.safetensors").is_file() and (ft1k / "export/hf/config.json").is_file()
    out = tmp_path / "eval.json"
    _run(
        "evaluate.py",
        [
            "--config",
            "finetune_demo_cpu",
            *TINY,
            "data.source=folder",
            f"data.path={images}",
            "model.num_classes=7",
            f"finetune.init={ft1k / 'export'}",
            "--out",
            str(out),
        ],
        tmp_path / "eval.log",
    )
    result = json.loads(out.read_text())
    assert result["images"] == 7
    for key in ("top1", "top5", "loss"):
        assert result[key] == pytest.approx(last[f"val/{key}"], abs=1e-5), key
