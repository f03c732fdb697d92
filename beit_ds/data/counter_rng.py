"""Counter-based random numbers for the on-device data path (house style rule 10): every draw is a
pure function of (seed, epoch, sample index, stream, draw number), computed for a whole batch at
once on any device.

A sample's key is Chris Wellons' ``lowbias32`` integer hash chained over the 32-bit words of
(seed, epoch, stream, index); draw ``k`` of the sample is ``hash32(key ^ hash32(k))``. So a
sample's crop, flip, jitter, erasing and mask never depend on the batch, rank, device or order
that computes them: a resumed run, on any number of ranks, draws the same numbers. Values are
held in int64 tensors below 2**32 and multiplied in 16-bit halves, so nothing overflows and CPU
and CUDA give the same bits; the same functions also take Python ints.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

MASK32 = 0xFFFFFFFF
_UNIT = 2.0**-24  # 24-bit uniforms: exact in float32

IntLike = TypeVar("IntLike", int, torch.Tensor)


def _mul32(x: IntLike, c: int) -> IntLike:
    """``x * c mod 2**32`` for ``0 <= x < 2**32``, with no product above 2**49."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def hash32(x: IntLike) -> IntLike:
    """``lowbias32``: a bijection of 32-bit values with low bias (int or int64 tensor)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _words(value: int) -> tuple[int, int]:
    return value & MASK32, (value >> 32) & MASK32


def sample_keys(seed: int, epoch: int, stream: int, indices: torch.Tensor) -> torch.Tensor:
    """``[B]`` int64 keys (below 2**32) of samples ``indices [B]`` (int64) in ``epoch``, on their device."""
    h = 0
    for word in (*_words(seed), *_words(epoch), stream & MASK32):
        h = hash32(h ^ word)
    idx = indices.to(torch.int64)
    return hash32(hash32((idx & MASK32) ^ h) ^ ((idx >> 32) & MASK32))


def _counters(first: int, count: int, device: torch.device) -> torch.Tensor:
    return hash32(torch.arange(first, first + count, dtype=torch.int64, device=device))


def uniform(keys: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Draws ``first .. first + count - 1`` of each key: ``[B, count]`` float32 in [0, 1)."""
    h = hash32(keys.unsqueeze(1) ^ _counters(first, count, keys.device).unsqueeze(0))
    return (h >> 8).to(torch.float32) * _UNIT


def normal(keys: torch.Tensor, count: int) -> torch.Tensor:
    """``[B, count]`` float32 standard normal values (Box-Muller on draws ``0 .. 2 count - 1``)."""
    h = hash32(keys.unsqueeze(1) ^ _counters(0, 2 * count, keys.device).unsqueeze(0))
    u = ((h >> 8).to(torch.float32) + 1.0) * _UNIT  # (0, 1]: the logarithm stays finite
    radius = torch.sqrt(-2.0 * torch.log(u[:, :count]))
    return radius * torch.cos((2.0 * math.pi) * u[:, count:])
