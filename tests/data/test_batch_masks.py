"""Batched masks of the on-device path: Algorithm 1's distribution (unilm's figures) and masks that
depend on (seed, epoch, index) only."""

from __future__ import annotations

import pytest
import torch

from beit_ds.config import MaskingConfig
from beit_ds.data.batch_masks import BatchMasks
from beit_ds.masking import build_mask_generator


def test_blockwise_masks_have_unilms_distribution():
    """14 × 14 grid, 75 patches, blocks of >= 16: unilm's mean 74.47 masked, exactly 75 in 66.6 % of
    draws (``BlockwiseMaskGenerator``); measured here 74.47 and 66.8 % over 4,000 draws."""
    masks = BatchMasks(build_mask_generator(MaskingConfig(), (14, 14)))(0, 0, torch.arange(4000))
    count = masks.sum(dim=(1, 2)).double()
    assert count.max().item() == 75
    assert count.mean().item() == pytest.approx(74.47, abs=0.1)
    assert (count == 75).double().mean().item() == pytest.approx(0.666, abs=0.03)
    rows = masks.any(dim=2).sum(dim=1)  # blocks, not scattered patches: few rows touched
    assert rows.double().mean().item() < 12  # measured 10.68; 75 scattered patches touch all 14 rows


def test_a_mask_depends_on_seed_epoch_and_index_only():
    masks = BatchMasks(build_mask_generator(MaskingConfig(num_masking_patches=26, min_block_patches=4), (8, 8)))
    all_of_them = masks(5, 2, torch.arange(100))
    assert torch.equal(masks(5, 2, torch.arange(40, 60)), all_of_them[40:60])
    assert not torch.equal(masks(5, 3, torch.arange(100)), all_of_them)
    random = BatchMasks(build_mask_generator(MaskingConfig(strategy="random", num_masking_patches=26), (8, 8)))
    drawn = random(5, 2, torch.arange(100))
    assert drawn.sum(dim=(1, 2)).unique().tolist() == [26]
    assert torch.equal(random(5, 2, torch.arange(10, 20)), drawn[10:20])
