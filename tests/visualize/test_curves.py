"""Curves of several runs from metrics.jsonl: the series read and the PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")  # the viz extra (in dev too)

from beit_ds.visualize.curves import plot_runs, read_metrics  # noqa: E402


def _run(folder, slope: float, val: bool) -> None:
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w") as f:
        for step in range(0, 50, 5):
            rec = {
                "step": step,
                "time": 1.0,
                "train/loss": 6 - slope * step,
                "train/lr": 1e-3,
                "train/mim_accuracy": 0.01 * step,
            }
            f.write(json.dumps(rec) + "\n")
            if val and step % 20 == 0:
                f.write(json.dumps({"step": step, "time": 2.0, "val/top1": 10.0 + step}) + "\n")
        f.write(json.dumps({"step": 45, "time": 3.0, "train/loss": 0.5}) + "\n")  # resumed: later value wins


def test_read_metrics_and_plot(tmp_path) -> None:
    _run(tmp_path / "beit", 0.1, True)
    _run(tmp_path / "scratch", 0.02, False)
    series = read_metrics(tmp_path / "beit")
    assert series["train/loss"][0] == list(range(0, 50, 5)) and series["train/loss"][1][-1] == 0.5
    assert series["val/top1"] == ([0, 20, 40], [10.0, 30.0, 50.0]) and "time" not in series
    out = plot_runs([tmp_path / "beit", tmp_path / "scratch"], tmp_path / "c.png")
    arr = np.asarray(Image.open(out).convert("RGB"))
    assert arr.shape == (224, 4 * 256, 3)  # loss, accuracy, lr, val top-1 (no mIoU logged)
    assert arr.std() > 10
    again = plot_runs([tmp_path / "beit", tmp_path / "scratch"], tmp_path / "d.png")
    assert again.read_bytes() == out.read_bytes()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "none")
