"""The multi-level feature pyramid UperNet needs from a plain ViT (seed App. A/B; unilm's BEiT
segmentation backbone, also Hugging Face's ``BeitFPNNeck``).

The four chosen blocks all sit at the patch stride ``p``; ``FeaturePyramid`` turns them into
strides 4, 8, 16 and 32 for ``p = 16`` (``fpn1``: two 2×2 transposed convolutions with BN + GELU
between them, ``fpn2``: one, ``fpn3``: identity, ``fpn4``: 2×2 max-pooling) or for ``p = 8``
(``fpn1``: one transposed convolution, ``fpn2``: identity, ``fpn3`` / ``fpn4``: 2× / 4× max-pool).
Module names and child indices are unilm's (``fpn1.0``, ``fpn1.1``, ``fpn1.3``, ``fpn2.0``).
"""

from __future__ import annotations

import torch
from torch import nn

from beit_ds.segmentation.layers import FP32BatchNorm2d


def _up(dim: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)


class FeaturePyramid(nn.Module):
    """Four ``[B, D, H/p, W/p]`` maps → ``[B, D, H/4, W/4]``, ``H/8``, ``H/16``, ``H/32`` (``p = 16``)."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.fpn1: nn.Module
        self.fpn2: nn.Module
        self.fpn3: nn.Module
        self.fpn4: nn.Module
        if patch_size == 16:
            self.fpn1 = nn.Sequential(_up(dim), FP32BatchNorm2d(dim), nn.GELU(), _up(dim))
            self.fpn2 = nn.Sequential(_up(dim))
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        elif patch_size == 8:
            self.fpn1 = nn.Sequential(_up(dim))
            self.fpn2 = nn.Identity()
            self.fpn3 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
            self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=4, stride=4))
        else:
            raise ValueError(f"model.patch_size={patch_size}: the UperNet pyramid is defined for patch 16 or 8")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats, strict=True)]
