"""The benchmark harness shared by ``bench/*.py``: the masked input batch, interleaved timing
and the one-JSON-object last line every bench script prints.

Timings on a shared machine drift with whatever else runs on it, so candidates are timed in
interleaved rounds (each round runs every candidate once, in rotating order) and compared by
their medians: a slow patch hits all candidates alike instead of one of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from beit_ds.config import MaskingConfig, ModelConfig
from beit_ds.masking import build_mask_generator, mask_rng


@dataclass
class MIMBatch:
    """One pre-training batch: ``images [B, 3, H, W]``, ``mask [B, N]`` (True = masked) and
    visual-token ``target [B, N]`` in ``[0, vocab)``."""

    images: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor

    @property
    def num_masked(self) -> int:
        return int(self.mask.sum())


def mim_batch(cfg: ModelConfig, batch: int, vocab: int, seed: int = 0) -> MIMBatch:
    """Random images, Algorithm-1 blockwise masks (the default 75 of 196) and random tokens."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)
    masker = build_mask_generator(MaskingConfig(), cfg.grid_size)
    masks = [torch.from_numpy(masker(mask_rng(seed, 0, i))).flatten() for i in range(batch)]
    target = torch.randint(0, vocab, (batch, cfg.num_patches), generator=gen)
    return MIMBatch(images, torch.stack(masks), target)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def check_clock(clock: str, threads: int) -> None:
    """``thread`` CPU time only sees the calling thread: it needs single-threaded torch."""
    if clock not in CLOCKS:
        raise ValueError(f"--clock {clock}: expected one of {', '.join(CLOCKS)}")
    if clock == "thread" and threads != 1:
        raise ValueError(f"--clock thread with --threads {threads}: expected --threads 1")


def timing_parser(description: str, warmup: int, repeats: int) -> argparse.ArgumentParser:
    """An argument parser with the options every timing bench shares (``--warmup``,
    ``--repeats``, ``--threads``, ``--clock``); ``setup_threads(args)`` applies them."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls per candidate")
    p.add_argument("--repeats", type=int, default=repeats, help="timed calls per candidate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", default="wall", help="wall, or thread (CPU time; needs --threads 1)")
    return p


def setup_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` and check ``--clock`` against it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    check_clock(args.clock, torch.get_num_threads())


def time_interleaved(
    candidates: dict[str, Callable[[int], None]], warmup: int, repeats: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """Seconds of ``repeats`` calls per candidate after ``warmup`` untimed ones.

    Each call gets the round number as its seed, so candidates that draw random numbers (drop
    path) draw the same ones in the same round. ``clock="thread"`` counts the CPU time of the
    calling thread (single-threaded torch: all the work, CPU autograd included, runs there),
    which other processes on a shared machine barely disturb; ``"wall"`` is elapsed time.
    """
    now = CLOCKS[clock]
    names = list(candidates)
    for r in range(warmup):
        for name in names:
            candidates[name](-1 - r)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = now()
            candidates[name](r)
            times[name].append(now() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def emit(result: dict[str, object]) -> None:
    """Print ``result`` as the single JSON object on the script's last line."""
    print(json.dumps(result, sort_keys=True), flush=True)
