"""Shared fixtures: the debug preset, seeded RNG, and the read-only shared datasets folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def datasets_dir() -> Path:
    """``../shared/datasets`` next to the checkout; tests using it skip when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS} (only present on the project's machines)")
    return DATASETS
