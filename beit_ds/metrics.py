"""Training metrics: one writer with TensorBoard and JSON-lines backends (rank 0 only), and a
throughput / ETA meter for the progress bar. ``metrics.jsonl`` and ``tensorboard/`` are refused in one
line when they are links (safe_write.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from beit_ds.artifacts import RunDir
from beit_ds.safe_write import make_dir, open_append


class MetricWriter:
    """``write(step, {"name": value})`` to ``run_dir/metrics.jsonl`` and TensorBoard scalars.

    Built on every rank; only the main rank writes (``enabled=False`` elsewhere).
    """

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        run = RunDir(run_dir)
        run.root.mkdir(parents=True, exist_ok=True)
        events = make_dir(run.tensorboard) if tensorboard else None  # a planted link is refused
        self._jsonl = open_append(run.metrics)  # never through a link; closed in close()
        if events is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(events))

    def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record: dict[str, Any] = {"step": step, "time": time.time()}
        record.update({f"{prefix}/{k}": (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def images(self, step: int, tag: str, images: Any) -> None:
        """TensorBoard images ``[B, 3, H, W]`` in [0, 1] (no JSON-lines record)."""
        if self._tb is not None:
            self._tb.add_images(tag, images, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ThroughputMeter:
    """Images per second over the last interval, and the ETA for the remaining steps."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._images = 0

    def update(self, images: int) -> None:
        self._images += images

    def rate(self) -> float:
        """Images/s since the last ``reset``."""
        elapsed = time.perf_counter() - self._t0
        return self._images / elapsed if elapsed > 0 else 0.0

    def reset(self) -> None:
        self._t0 = time.perf_counter()
        self._images = 0
