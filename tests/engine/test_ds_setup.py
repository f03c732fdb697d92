"""Merging ds_configs/*.json with the recipe: batch arithmetic and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.engine.ds_setup import precision_of, read_ds_config, resolve_ds_config
from beit_ds.recipe import OptimConfig, ScheduleConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, precision, stage", [
    ("zero2_fp16", "fp16", 2), ("zero2_bf16", "bf16", 2), ("zero2_fp32_cpu", "fp32", 2),
    ("zero1_bf16", "bf16", 1), ("zero0_bf16", "bf16", 0), ("zero1_fp32_cpu", "fp32", 1), ("zero0_fp32_cpu", "fp32", 0),
])
def test_shipped_configs_resolve(name, precision, stage):
    ds = read_ds_config(ROOT / "ds_configs" / f"{name}.json")
    assert precision_of(ds) == precision and ds["zero_optimization"]["stage"] == stage
    out = resolve_ds_config(ds, ScheduleConfig(micro_batch_size=16, grad_accum=4), OptimConfig(clip_grad=3.0), 8, 1e-3)
    assert out["train_batch_size"] == 16 * 4 * 8 and out["gradient_accumulation_steps"] == 4
    assert out["gradient_clipping"] == 3.0 and out["optimizer"]["params"]["lr"] == 1e-3
    assert out["optimizer"]["params"]["betas"] == [0.9, 0.999] and out["optimizer"]["params"]["weight_decay"] == 0.05


def _write(tmp_path, data) -> Path:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "data, message",
    [
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16.enabled and bf16.enabled are both true"),
        ({"train_batch_size": 64}, "train_batch_size=64 is set by the recipe"),
        ({"optimizer": {"type": "SGD"}}, "optimizer.type='SGD'"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, "optimizer.params.lr is set by the recipe"),
    ],
)
def test_inconsistent_settings_are_one_line(tmp_path, data, message):
    ds = read_ds_config(_write(tmp_path, data))
    with pytest.raises(ConfigError) as err:
        resolve_ds_config(ds, ScheduleConfig(), OptimConfig(), 2, 1e-3, source="ds.json")
    assert message in str(err.value) and "ds.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: no such file"):
        read_ds_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{\n  'x': 1\n}")
    with pytest.raises(ConfigError, match="bad.json: invalid JSON at line 2"):
        read_ds_config(tmp_path / "bad.json")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"fp16": True}, 'fp16=true: expected a JSON object, e.g. "fp16": {"enabled": true}'),
        ({"optimizer": "AdamW"}, 'optimizer="AdamW": expected a JSON object'),
        ({"zero_optimization": {"stage": "two"}}, 'zero_optimization.stage="two": expected 0, 1, 2 or 3'),
        ({"bf16": {"enabled": "yes"}}, 'bf16.enabled="yes": expected true or false'),
    ],
)
def test_wrong_shapes_are_one_line_before_deepspeed(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        read_ds_config(_write(tmp_path, data))
    assert message in str(err.value) and "\n" not in str(err.value)
