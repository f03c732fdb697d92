"""Which image patches are masked: blockwise masking (seed §2.3, Algorithm 1) and the
random-masking ablation (seed Table 4).

Masks are drawn on the data side from an explicit ``numpy.random.Generator`` so that a sample's
mask is a pure function of (seed, epoch, sample index) — see ``mask_rng`` — and a resumed run
sees the same masks. A mask is a boolean array ``[H, W]`` over the patch grid, True = masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from beit_ds.config import MaskingConfig


class MaskingError(ValueError):
    """A masking argument that does not fit, in one line ``key=value: expected``: ``key`` is the
    argument (a ``masking.*`` key, or ``grid``); ``names_grid``: the message states the patch grid
    it was checked against (callers add it otherwise)."""

    def __init__(self, key: str, value: object, expected: str, names_grid: bool = False) -> None:
        super().__init__(f"{key}={value!r}: {expected}")
        self.key, self.value, self.expected, self.names_grid = key, value, expected, names_grid


class MaskGenerator(Protocol):
    """Draws one boolean mask ``[H, W]`` per call."""

    grid: tuple[int, int]
    num_masking_patches: int

    def __call__(self, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class MaskBlock:
    """An axis-aligned rectangle of patches: rows ``top:top+height``, cols ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


def mask_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of ``epoch``: independent of rank, worker and order."""
    return np.random.default_rng([seed, epoch, index])


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    ok = len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)
    if not ok:
        raise MaskingError("grid", grid, "expected two positive integers (H, W)", names_grid=True)
    return (int(grid[0]), int(grid[1]))


def _check_target(num_masking_patches: int, grid: tuple[int, int]) -> int:
    n = grid[0] * grid[1]
    if not 0 < num_masking_patches < n:
        raise MaskingError("num_masking_patches", num_masking_patches, f"expected 1..{n - 1} for a grid {grid}",
                           names_grid=True)
    return num_masking_patches


class BlockwiseMaskGenerator:
    """Algorithm 1: add random blocks until the target count is reached, never exceeding it.

    Each step draws a block area ``s`` uniformly between ``min_block`` and
    ``min(max_block, left)`` (``left`` = patches still to mask) — once fewer than ``min_block``
    patches are left, that is uniformly between ``left`` and ``min_block``, as unilm's
    ``random.uniform(min_num_patches, max_mask_patches)`` does — and an aspect ratio ``r``
    log-uniform in ``[min_aspect, 1/min_aspect]``, giving a ``round(sqrt(s r)) × round(sqrt(s / r))``
    block at a uniform position; a block as tall or as wide as the grid is rejected (unilm's strict
    bound). The block is kept when it masks at least one new patch and no more than ``left``;
    after ``max_attempts`` rejected draws in a row the mask is returned as is (so a draw can end
    a few patches short of the target). On the 14 × 14 grid with 75 patches and blocks of ≥ 16
    this gives unilm's distribution: mean 74.47 masked, 75 exactly in 66.6 % of draws.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        num_masking_patches: int,
        min_block_patches: int = 16,
        max_block_patches: int | None = None,
        min_aspect: float = 0.3,
        max_attempts: int = 10,
    ) -> None:
        self.grid = _check_grid(grid)
        self.num_masking_patches = _check_target(num_masking_patches, self.grid)
        if not 0 < min_block_patches <= num_masking_patches:
            expected = f"expected 1..num_masking_patches ({num_masking_patches})"
            raise MaskingError("min_block_patches", min_block_patches, expected)
        max_block = num_masking_patches if max_block_patches is None else max_block_patches
        if max_block < min_block_patches:
            expected = f"expected >= min_block_patches ({min_block_patches})"
            raise MaskingError("max_block_patches", max_block_patches, expected)
        if not 0.0 < min_aspect <= 1.0:
            raise MaskingError("min_aspect", min_aspect, "expected a number in (0, 1]")
        self.min_block_patches = min_block_patches
        self.max_block_patches = max_block
        self.log_aspect = (math.log(min_aspect), -math.log(min_aspect))
        self.max_attempts = max_attempts

    def _draw_block(self, rng: np.random.Generator, left: int) -> MaskBlock | None:
        bound = min(self.max_block_patches, left)  # below min_block once few patches are left
        area = self.min_block_patches + (bound - self.min_block_patches) * rng.random()
        aspect = math.exp(rng.uniform(*self.log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (0 < h < self.grid[0] and 0 < w < self.grid[1]):
            return None
        top = int(rng.integers(0, self.grid[0] - h + 1))
        left_col = int(rng.integers(0, self.grid[1] - w + 1))
        return MaskBlock(top, left_col, h, w)

    def sample_blocks(self, rng: np.random.Generator) -> tuple[np.ndarray, list[MaskBlock]]:
        """One mask ``[H, W]`` (bool) and the blocks that were placed to make it."""
        mask = np.zeros(self.grid, dtype=bool)
        blocks: list[MaskBlock] = []
        count = 0
        while count < self.num_masking_patches:
            left = self.num_masking_patches - count
            for _ in range(self.max_attempts):
                block = self._draw_block(rng, left)
                if block is None:
                    continue
                window = mask[block.top : block.top + block.height, block.left : block.left + block.width]
                new = window.size - int(window.sum())
                if 0 < new <= left:
                    window[...] = True
                    blocks.append(block)
                    count += new
                    break
            else:
                break
        return mask, blocks

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample_blocks(rng)[0]


class RandomMaskGenerator:
    """The ablation: exactly ``num_masking_patches`` positions chosen uniformly at random."""

    def __init__(self, grid: tuple[int, int], num_masking_patches: int) -> None:
        self.grid = _check_grid(grid)
        self.num_masking_patches = _check_target(num_masking_patches, self.grid)

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        n = self.grid[0] * self.grid[1]
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=self.num_masking_patches, replace=False)] = True
        return mask.reshape(self.grid)


def masking_target(cfg: MaskingConfig, grid: tuple[int, int]) -> int:
    """Patches to mask on ``grid``: the configured count, else ``round(mask_ratio · H · W)``."""
    if cfg.num_masking_patches is not None:
        return cfg.num_masking_patches
    return int(round(cfg.mask_ratio * grid[0] * grid[1]))


def build_mask_generator(cfg: MaskingConfig, grid: tuple[int, int]) -> MaskGenerator:
    """The generator ``cfg.strategy`` names, for the model's patch ``grid`` (H, W)."""
    target = masking_target(cfg, _check_grid(grid))
    if cfg.strategy == "random":
        return RandomMaskGenerator(grid, target)
    return BlockwiseMaskGenerator(
        grid,
        target,
        min_block_patches=cfg.min_block_patches,
        max_block_patches=cfg.max_block_patches,
        min_aspect=cfg.min_aspect,
    )
