"""Mixup / CutMix (seed App. H): targets are smoothed one-hot vectors mixed with the pixels' λ."""

from __future__ import annotations

import pytest
import torch

from beit_ds.config import AugmentConfig
from beit_ds.data.mixup import Mixup, mix_rng, smoothed_one_hot


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_and_cutmix_targets_sum_to_one(mixup, cutmix):
    mix = Mixup(AugmentConfig(mixup=mixup, cutmix=cutmix), num_classes=10, smoothing=0.1)
    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 8, 8).contiguous()
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    for seed in range(8):
        mixed, targets = mix(images, labels, mix_rng(seed, labels))
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
        lam = float(targets[0, 0] - 0.01) / 0.9  # weight of image 0's own label
        assert 0.0 <= lam <= 1.0
        torch.testing.assert_close(targets[0, 5], torch.tensor(0.01 + 0.9 * (1 - lam)))
        own = (mixed[0] == 0).float().mean().item() if cutmix and not mixup else None
        if own is not None:  # CutMix: the pasted area is exactly 1 - λ
            assert own == pytest.approx(lam, abs=1e-6)
        if mixup and not cutmix:  # Mixup: pixel = λ·0 + (1 - λ)·5
            torch.testing.assert_close(mixed[0], torch.full((3, 8, 8), 5 * (1 - lam)))
        again, _ = mix(images, labels, mix_rng(seed, labels))
        assert torch.equal(again, mixed)
    off = Mixup(AugmentConfig(mixup=0.0, cutmix=0.0), 10, 0.1)
    same, targets = off(images, labels, mix_rng(0, labels))
    assert same is images and torch.equal(targets, smoothed_one_hot(labels, 10, 0.1))
