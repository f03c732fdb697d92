"""Fixtures for the data tests: tiny configs and small real-photo image trees written to tmp_path."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from beit_ds.config import DataConfig, MaskingConfig, TransformConfig
from beit_ds.data.demo import DEMO_PHOTOS, demo_folder

TINY = TransformConfig(input_size=32, second_input_size=16)  # patch 4 → an 8 × 8 grid


@pytest.fixture(autouse=True)
def _one_thread():
    """Run torch on one thread, as in a DataLoader worker (tiny ops stall on a busy OpenMP pool)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_data() -> Callable[..., DataConfig]:
    """``DataConfig`` with 32 px / 16 px views, loading in-process; keyword overrides."""

    def make(**overrides) -> DataConfig:
        return DataConfig(**{"num_workers": 0, "transform": TINY, **overrides})

    return make


@pytest.fixture
def tiny_masking() -> MaskingConfig:
    return MaskingConfig(num_masking_patches=26, min_block_patches=4)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Six demo photographs as RGB uint8 arrays, reduced to about 96 px for speed."""
    out = []
    for _, file in DEMO_PHOTOS[:6]:
        image = Image.open(demo_folder() / file).convert("RGB")
        image.thumbnail((96, 96))
        out.append(np.asarray(image))
    return out


def _jpeg_bytes(array: np.ndarray, **save_args) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **save_args)
    return buf.getvalue()


@pytest.fixture(scope="session")
def jpeg_bytes() -> Callable[..., bytes]:
    """``jpeg_bytes(rgb_uint8_array, **PIL_save_args)`` → JPEG file bytes (quality 90)."""
    return _jpeg_bytes


@pytest.fixture
def image_tree(tmp_path: Path, photos: list[np.ndarray]) -> Path:
    """``tree/<class>/<n>.jpg``: classes a, b, c with 3, 2, 1 JPEG crops of real photographs."""
    root = tmp_path / "tree"
    counts = {"a": 3, "b": 2, "c": 1}
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for n in range(count):
            photo = photos[(c + n) % len(photos)]
            (root / name / f"{n}.jpg").write_bytes(_jpeg_bytes(photo[n : n + 64, n : n + 80]))
    return root
