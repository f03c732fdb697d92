"""Segmentation through the real ``deepspeed`` launcher on 2 CPU ranks (gloo, SyncBN across them):
train, kill mid-run, resume → the same losses bit for bit and the same validation mIoU; the
export holds ours / unilm / Hugging Face weights; ``launch/evaluate_segmentation.py`` on 2 ranks
reproduces the last validation numbers (issue 15). Data: synthetic image/label pairs (coloured
rectangles whose colour is the class), so the test needs no download."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import wait_for
from tests.e2e.test_pretrain_launcher import _rows, _wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30], [120, 120, 120]], dtype=np.uint8)


def make_pairs(root: Path, n: int, seed: int) -> Path:
    """``n`` 96x72 images of 2-4 coloured rectangles on class 4, labels = class per pixel, a band of void (9)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = np.full((72, 96), 4, dtype=np.uint8)
        for _ in range(rng.integers(2, 5)):
            y, x = rng.integers(0, 50), rng.integers(0, 70)
            label[y : y + rng.integers(10, 30), x : x + rng.integers(10, 30)] = rng.integers(0, 4)
        image = COLOURS[label] + rng.integers(0, 20, (72, 96, 3), dtype=np.uint8)
        label[:, :3] = 9  # void
        Image.fromarray(image).save(root / "images" / f"{i:03d}.jpg", quality=95)
        Image.fromarray(label).save(root / "labels" / f"{i:03d}.png")
    return root


ARGS = [
    "model.img_size=64", "model.embed_dim=32", "model.depth=4", "model.num_heads=2",
    "decode.num_classes=5", "decode.out_indices=[0,1,2,3]", "decode.channels=32", "decode.aux_channels=16",
    "decode.class_names=[red,green,blue,yellow,grey]", "data.ignore_index=9", "data.num_workers=1",
    "data.transform.scale=[96,72]", "data.transform.eval_scale=[96,72]", "inference.mode=slide",
    "inference.stride=32", "inference.overlays=2", "schedule.steps=8", "schedule.warmup_steps=2",
    "schedule.micro_batch_size=2", "checkpoint.save_every_steps=4", "log.every_steps=1",
    "log.progress_bar=false", "log.tensorboard=false",
]


def _launch(script: str, out: Path, data: Path, extra: list[str]) -> subprocess.Popen:
    port = str(29500 + (os.getpid() + len(str(out)) + len(script)) % 2000)
    ds = ["--deepspeed_config", str(ROOT / "ds_configs/zero2_fp32_cpu.json")] if script == "segment.py" else []
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", port, str(ROOT / "launch" / script), *ds,
           "--config", "seg_camvid_demo_cpu",
           f"data.path={data / 'train'}", f"data.eval_path={data / 'val'}", *ARGS, *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in _rows(out) if "train/loss" in r}


def _val(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in _rows(out) if "val/mIoU" in r}


def test_two_ranks_segmentation_kill_resume_export_evaluate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_pairs(data / "train", 16, seed=0)
    make_pairs(data / "val", 4, seed=1)
    ref = tmp_path / "ref"
    _wait(_launch("segment.py", ref, data, [f"checkpoint.output_dir={ref}"]), ref, timeout=900)
    log = (tmp_path / "ref.log").read_text(errors="replace")
    full, val = _losses(ref), _val(ref)
    assert sorted(full) == list(range(1, 9)) and sorted(val) == [4, 8]
    assert all(0 <= v["val/mIoU"] <= 100 for v in val.values())
    assert "| red |" in log  # the per-class table with the recipe's class names
    assert (ref / "overlays" / "step_8.png").is_file()
    export = ref / "export"
    assert {p.name for p in export.iterdir()} >= {"model.safetensors", "mmseg", "hf", "recipe.json"}
    config = json.loads((export / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BeitForSemanticSegmentation"] and config["out_indices"] == [2, 3, 4, 5]

    run = tmp_path / "run"
    proc = _launch("segment.py", run, data, [f"checkpoint.output_dir={run}"])
    wait_for(lambda: max(_losses(run), default=0) >= 6, 900, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 6 <= max(_losses(run)) < 8
    assert json.loads((run / "checkpoints/latest.json").read_text())["latest"].endswith("_00000004")
    _wait(_launch("segment.py", run, data, [f"checkpoint.output_dir={run}"]), run, timeout=900)
    after = _losses(run)
    for step in range(5, 9):
        assert after[step] == full[step], (step, after[step], full[step])
    assert _val(run)[8]["val/mIoU"] == val[8]["val/mIoU"]

    ev = tmp_path / "eval"
    out = tmp_path / "eval.json"
    _wait(_launch("evaluate_segmentation.py", ev, data, [f"finetune.init={ref}", "--out", str(out)]), ev, timeout=900)
    got = json.loads(out.read_text())
    assert got["images"] == 4
    assert got["mIoU"] == pytest.approx(val[8]["val/mIoU"], abs=1e-6)
    assert out.with_suffix(".png").is_file()
