"""Mixup and CutMix of a batch, with label smoothing (seed App. H, DeiT's recipe).

One mixing weight λ ~ Beta(α, α) per batch, the partner of image ``i`` being image ``B-1-i`` (the
batch reversed, timm's "batch" mode). CutMix pastes the partner's box of area fraction ``1 - λ``
(λ then corrected to the pasted area after clipping at the border). Targets are the smoothed
one-hot vectors mixed with the same λ, so each row sums to 1. The draws come from a generator
seeded by (seed, the batch's sample indices) (``mix_rng``), so a resumed run mixes alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from beit_ds.config import AugmentConfig

MIX_STREAM = 0x6D6978  # "mix": keeps these draws apart from the samples' transform streams


def mix_rng(seed: int, indices: torch.Tensor) -> np.random.Generator:
    """The generator of the batch holding global samples ``indices [B]``."""
    return np.random.default_rng([seed, MIX_STREAM, *indices.tolist()])


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``[B] -> [B, C]``: ``1 - ε + ε/C`` on the label, ``ε/C`` elsewhere (rows sum to 1)."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.unsqueeze(1), 1.0 - smoothing + off)


@dataclass
class Mixup:
    """``mix(images [B,3,H,W], labels [B], rng) -> (images, targets [B, C])``."""

    augment: AugmentConfig
    num_classes: int
    smoothing: float = 0.0

    @property
    def enabled(self) -> bool:
        a = self.augment
        return a.mix_prob > 0 and (a.mixup > 0 or a.cutmix > 0)

    def _draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(λ, use CutMix); λ = 1 means no mixing."""
        a = self.augment
        if not self.enabled or rng.random() >= a.mix_prob:
            return 1.0, False
        cutmix = a.cutmix > 0 and (a.mixup <= 0 or rng.random() < a.switch_prob)
        alpha = a.cutmix if cutmix else a.mixup
        return float(rng.beta(alpha, alpha)), cutmix

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, cutmix = self._draw(rng)
        targets = smoothed_one_hot(labels, self.num_classes, self.smoothing)
        if lam == 1.0:
            return images, targets
        partner = images.flip(0)
        if cutmix:
            images, lam = self._paste_box(images, partner, lam, rng)
        else:
            images = images * lam + partner * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)

    @staticmethod
    def _paste_box(
        images: torch.Tensor, partner: torch.Tensor, lam: float, rng: np.random.Generator
    ) -> tuple[torch.Tensor, float]:
        h, w = images.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out = images.clone()
        out[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
