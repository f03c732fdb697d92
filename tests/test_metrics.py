"""The metric writer (metrics.py) appends to ``metrics.jsonl`` and writes TensorBoard events into
the run folder itself, never through a link planted there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.metrics import MetricWriter


def test_metrics_are_appended_as_json_lines(tmp_path: Path) -> None:
    for step in (1, 2):
        writer = MetricWriter(tmp_path, enabled=True, tensorboard=False)
        writer.write(step, {"loss": 0.5 * step})
        writer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 0.5), (2, 1.0)]


def test_a_planted_metrics_link_is_refused_in_one_line(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'metrics.jsonl'}: a symbolic link") as err:
        MetricWriter(tmp_path, enabled=True, tensorboard=False)
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious"


def test_a_planted_tensorboard_link_is_refused_in_one_line(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "tensorboard").symlink_to(victim.parent)
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'tensorboard'}: a symbolic link"):
        MetricWriter(tmp_path, enabled=True, tensorboard=True)
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
