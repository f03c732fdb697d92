"""End-to-end tests start real processes: they must not inherit the torch.distributed variables
that an in-process engine test of the same pytest session set (its port is still held)."""

from __future__ import annotations

import pytest

TORCH_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_inherited_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCH_DIST_ENV:
        monkeypatch.delenv(name, raising=False)
