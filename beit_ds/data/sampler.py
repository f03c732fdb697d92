"""Distributed sampling that resumes exactly, also on a different number of ranks.

Each epoch has one global order of the N sample indices, a pure function of (seed, epoch). The
run's position is ``start_sample``: how many samples of that order all ranks together have
consumed. From there rank ``r`` of ``W`` reads positions ``start + r``, ``start + r + W``, … so the
ranks' slices are disjoint and, after every rank has taken ``k`` samples, exactly the first
``start + k W`` positions are consumed, whatever ``W`` was before. A resume therefore needs only
(epoch, position), and the position is global, in samples, so it survives a change of world size.
Training drops the last ``(N - start) mod W`` positions so that every rank gets the same count;
evaluation keeps them (ranks may then differ by one sample, and nothing is padded or duplicated).
The sampler yields ``(epoch, index)`` keys: the dataset seeds crops and masks from them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of epoch ``epoch``: a permutation of ``range(num_samples)`` (int64)."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)


class ResumableDistributedSampler(Sampler[tuple[int, int]]):
    """Rank ``rank``'s share of epoch ``epoch``, starting at global position ``start_sample``."""

    def __init__(
        self,
        num_samples: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_sample: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
        if not 0 <= start_sample <= num_samples:
            raise ValueError(f"start_sample={start_sample}: expected 0..{num_samples} (samples in the epoch)")
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed={seed}, epoch={epoch}: expected non-negative integers")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.epoch, self.start_sample = seed, epoch, start_sample
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self) -> int:
        left = self.num_samples - self.start_sample
        if self.drop_last:
            return left // self.world_size
        return max(0, (left - self.rank + self.world_size - 1) // self.world_size)

    def positions(self) -> np.ndarray:
        """The global positions this rank reads, in order."""
        first = self.start_sample + self.rank
        return np.arange(first, first + len(self) * self.world_size, self.world_size, dtype=np.int64)

    def indices(self) -> np.ndarray:
        """The sample indices this rank reads, in order."""
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)
        return order[self.positions()]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.indices())
