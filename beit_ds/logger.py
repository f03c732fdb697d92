"""Process logging: stdlib ``logging``, rank 0 speaks, every rank writes its own file on error."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from beit_ds.artifacts import RunDir
from beit_ds.safe_write import open_append

LOGGER_NAME = "beit_ds"


class _OwnedStream(logging.StreamHandler):
    """A ``StreamHandler`` that closes its file when it is closed."""

    def close(self) -> None:
        try:
            self.flush()
            self.stream.close()
        finally:
            super().close()


class _RankZeroFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.ERROR


def init_logging(rank: int, run_dir: Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``beit_ds`` logger: stderr (rank 0, errors from all), ``run_dir/train.log``."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    stream.addFilter(_RankZeroFilter(rank))
    logger.addHandler(stream)
    if run_dir is not None and rank == 0:
        run = RunDir(run_dir)
        run.root.mkdir(parents=True, exist_ok=True)
        file_handler = _OwnedStream(open_append(run.log))  # never through a planted link
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
