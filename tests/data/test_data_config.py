"""``data`` / ``data.transform`` config sections: defaults, YAML nesting, one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from beit_ds.config import ConfigError, DataConfig, LoaderConfig, SegDataConfig, TransformConfig
from beit_ds.config_io import build_dataclass, load_recipe


def test_defaults_are_the_seed_recipe():
    t = DataConfig().transform
    assert (t.input_size, t.second_input_size, t.interpolation, t.second_interpolation) == (
        224,
        112,
        "bicubic",
        "lanczos",
    )
    assert t.scale == (0.08, 1.0) and t.color_jitter == 0.4 and t.hflip == 0.5 and t.tokenizer_view == "dalle"


def test_nested_section_from_yaml_mapping():
    cfg = build_dataclass(
        DataConfig, {"source": "demo", "transform": {"input_size": 32, "scale": [0.2, 1.0]}}, "data"
    )
    assert cfg.transform.input_size == 32 and cfg.transform.scale == (0.2, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "s3"}, "data.source='s3': expected one of 'demo', 'folder'"),
        ({"source": "folder"}, "data.path='': expected a path for data.source='folder'"),
        ({"num_workers": -1}, "data.num_workers=-1: expected an integer >= 0"),
        ({"max_skip_fraction": 1.5}, "data.max_skip_fraction=1.5: expected a number in [0, 1]"),
        ({"repeats": 0}, "data.repeats=0: expected a positive integer"),
    ],
)
def test_data_errors_name_the_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        DataConfig(**kwargs)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": (0.5, 0.1)}, "data.transform.scale=(0.5, 0.1): expected two numbers 0 < lo <= hi <= 1"),
        (
            {"second_interpolation": "nearest"},
            "data.transform.second_interpolation='nearest': expected one of",
        ),
        (
            {"tokenizer_view": "vqgan"},
            "data.transform.tokenizer_view='vqgan': expected one of 'dalle', 'raw'",
        ),
        ({"std": (0.5, 0.0, 0.5)}, "data.transform.std=(0.5, 0.0, 0.5): expected three positive numbers"),
        ({"crop_pct": 0}, "data.transform.crop_pct=0: expected a number in (0, 1]"),
    ],
)
def test_transform_errors_name_the_key(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TransformConfig(**kwargs)
    assert str(info.value).startswith(message)


LOADER_KEYS = ("repeats", "num_workers", "pin_memory", "prefetch_factor", "max_image_pixels", "max_skip_fraction",
               "check_files", "timeout")


def test_both_data_sections_take_the_loader_keys_from_one_place():
    loader = {f.name: f.default for f in dataclasses.fields(LoaderConfig)}
    assert set(LOADER_KEYS) | {"source", "path", "eval_path"} == set(loader)
    for section in (DataConfig, SegDataConfig):
        assert issubclass(section, LoaderConfig)
        fields = {f.name: f.default for f in dataclasses.fields(section)}
        assert {k: fields[k] for k in LOADER_KEYS} == {k: loader[k] for k in LOADER_KEYS}
    assert (loader["num_workers"], loader["max_skip_fraction"], loader["timeout"]) == (8, 0.01, 300.0)
    assert (DataConfig().source, SegDataConfig(path="x").source) == ("demo", "ade20k")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.num_workers=-1", "data.num_workers=-1: expected an integer >= 0"),
        ("data.timeout=-5", "data.timeout=-5.0: expected"),
        ("data.check_files=-1", "data.check_files=-1: expected an integer >= 0"),
    ],
)
def test_loader_keys_stay_at_data_in_every_kind(override, message):
    for name in ("pretrain_demo_cpu", "finetune_demo_cpu", "seg_camvid_demo_cpu"):
        assert load_recipe(None, name, ["data.num_workers=3", "data.repeats=2"]).data.num_workers == 3
        with pytest.raises(ConfigError) as info:
            load_recipe(None, name, [override])
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
