"""Process logging (logger.py): rank 0 appends to ``run_dir/train.log``, never through a link."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.logger import LOGGER_NAME, init_logging


@pytest.fixture(autouse=True)
def _quiet_afterwards():
    yield
    init_logging(0)  # drop the file handler of the run folder the test made


def test_the_log_file_is_appended_to(tmp_path: Path) -> None:
    init_logging(0, tmp_path).info("first")
    init_logging(0, tmp_path).info("second")
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(" INFO ")[-1] for line in lines] == ["first", "second"]


def test_a_planted_log_link_is_refused_in_one_line(tmp_path: Path, victim: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").symlink_to(victim)
    with pytest.raises(ConfigError, match=f"^{run / 'train.log'}: a symbolic link"):
        init_logging(0, run).info("through the link?")
    assert victim.read_text() == "precious"
