"""Masks for a whole batch at once (seed §2.3, Algorithm 1; the random-masking ablation of Table 4),
for the on-device data path.

``BlockwiseMaskGenerator`` draws one mask per call from a per-sample generator, one block at a time
(≈ 150 µs a mask on the 8 × 8 grid of the CIFAR recipe). ``BatchMasks`` runs the same algorithm for
every sample of a batch in lockstep on tensors: in round ``t`` each unfinished sample draws its
``t``-th block from the counter hash keyed by (seed, epoch, index) (``counter_rng``), keeps it when
it masks at least one new patch and no more than are left, and finishes at the target count or
after ``max_attempts`` rejected blocks in a row — the generator's rules, parameters and
distribution (``tests/data/test_batch_masks.py`` checks unilm's figures), not its numbers. A
sample's mask depends on its key only, never on the batch it is drawn in. About 6-7 rounds per
sample on the CIFAR recipe's grid; finished samples drop out of later rounds.
"""

from __future__ import annotations

import torch

from beit_ds.data.counter_rng import sample_keys, uniform
from beit_ds.masking import BlockwiseMaskGenerator, MaskGenerator, RandomMaskGenerator

MASK_STREAM = 0x6D6B  # "mk": keeps the masks' draws apart from the views'


class BatchMasks:
    """``masks(seed, epoch, indices [B]) -> [B, H, W]`` bool (True = masked) for the parameters of
    ``generator`` (a ``BlockwiseMaskGenerator`` or a ``RandomMaskGenerator``), on ``indices``' device
    (the loader draws them on the CPU — a few bytes per sample — and moves them)."""

    def __init__(self, generator: MaskGenerator) -> None:
        if not isinstance(generator, (BlockwiseMaskGenerator, RandomMaskGenerator)):
            raise TypeError(f"{type(generator).__name__}: no batched version (expected blockwise or random masks)")
        self.generator = generator
        self.grid = generator.grid

    def __call__(self, seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        keys = sample_keys(seed, epoch, MASK_STREAM, indices)
        if isinstance(self.generator, RandomMaskGenerator):
            return self._random(keys)
        return self._blockwise(keys, self.generator)

    def _random(self, keys: torch.Tensor) -> torch.Tensor:
        """Exactly ``num_masking_patches`` positions per sample, uniformly at random."""
        h, w = self.grid
        order = uniform(keys, 0, h * w).argsort(dim=1)[:, : self.generator.num_masking_patches]
        mask = torch.zeros(len(keys), h * w, dtype=torch.bool, device=keys.device)
        return mask.scatter_(1, order, True).view(-1, h, w)

    def _blockwise(self, keys: torch.Tensor, g: BlockwiseMaskGenerator) -> torch.Tensor:
        """Algorithm 1 in lockstep (see the module docstring). Each round works on the unfinished
        samples only (compacted by boolean indexing: meant for CPU tensors, where that costs no sync)."""
        (gh, gw), device = self.grid, keys.device
        grid = (torch.arange(gh, device=device).view(1, gh, 1), torch.arange(gw, device=device).view(1, 1, gw))
        out = torch.zeros(len(keys), gh, gw, dtype=torch.bool, device=device)
        live = torch.arange(len(keys), device=device)
        mask, count = out.clone(), torch.zeros(len(keys), dtype=torch.int64, device=device)
        fails, round_ = torch.zeros_like(count), 0
        while len(live):
            left = g.num_masking_patches - count
            block, fits = _blocks(uniform(keys, 4 * round_, 4).double(), left, g, grid)
            new = (block & ~mask).sum(dim=(1, 2))
            keep = fits & (new > 0) & (new <= left)
            mask |= block & keep.view(-1, 1, 1)
            count = count + torch.where(keep, new, torch.zeros_like(new))
            fails = torch.where(keep, torch.zeros_like(fails), fails + 1)
            stay = (count < g.num_masking_patches) & (fails < g.max_attempts)
            out[live[~stay]] = mask[~stay]
            live, keys, mask, count, fails = live[stay], keys[stay], mask[stay], count[stay], fails[stay]
            round_ += 1
        return out


def _blocks(
    u: torch.Tensor, left: torch.Tensor, g: BlockwiseMaskGenerator, grid: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block per row of ``u [n, 4]`` (area, aspect, top, left draws) for samples with ``left [n]``
    patches still to mask: the block ``[n, H, W]`` (bool) and whether its shape fits the grid ``[n]``."""
    rows, cols = grid
    gh, gw = rows.shape[1], cols.shape[2]
    bound = left.clamp(max=g.max_block_patches)  # below min_block once few patches are left
    area = g.min_block_patches + (bound - g.min_block_patches) * u[:, 0]
    aspect = torch.exp(g.log_aspect[0] + (g.log_aspect[1] - g.log_aspect[0]) * u[:, 1])
    h, w = torch.sqrt(area * aspect).round().view(-1, 1, 1), torch.sqrt(area / aspect).round().view(-1, 1, 1)
    top, start = torch.floor(u[:, 2].view(-1, 1, 1) * (gh - h + 1)), torch.floor(u[:, 3].view(-1, 1, 1) * (gw - w + 1))
    block = (rows >= top) & (rows < top + h) & (cols >= start) & (cols < start + w)
    fits = ((h > 0) & (h < gh) & (w > 0) & (w < gw)).view(-1)
    return block, fits
