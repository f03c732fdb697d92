"""SETR-PUP, the task layer of the seed's §2.6 / §3.2 (Table 3): "several deconvolution layers as
decoder" on the last chosen block (Zheng et al. 2021; mmseg's ``SETRUPHead``).

The patch tokens are layer-normalised, then ``num_convs`` × (3×3 conv-BN-ReLU, ×``up_scale``
bilinear upsampling) and a 1×1 classifier: ``[B, D, H/16, W/16] -> [B, classes, H, W]`` with
4 × ×2 (the main head) or 2 × ×4 (SETR's auxiliary heads on blocks 0, 1, 2 of the four).
Names are mmseg's (``norm``, ``up_convs.{i}.0.conv``, ``up_convs.{i}.0.bn``, ``conv_seg``).
"""

from __future__ import annotations

import torch
from torch import nn

from beit_ds.segmentation.layers import ConvBNReLU
from beit_ds.segmentation.upernet import ClassifierMixin


class SETRUpHead(ClassifierMixin):
    """Progressive upsampling of feature ``in_index``: ``[B, dim, h, w] -> [B, classes, h·s^n, w·s^n]``."""

    def __init__(self, dim: int, channels: int, num_classes: int, num_convs: int, up_scale: int,
                 dropout: float, in_index: int = 3) -> None:
        super().__init__()
        self.in_index = in_index
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        widths = [dim] + [channels] * num_convs
        self.up_convs = nn.ModuleList(
            nn.Sequential(
                ConvBNReLU(a, b, 3, padding=1),
                nn.Upsample(scale_factor=up_scale, mode="bilinear", align_corners=False),
            )
            for a, b in zip(widths[:-1], widths[1:])
        )
        self._classifier(channels, num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[self.in_index]
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over channels per token
        for up in self.up_convs:
            x = up(x)
        return self.cls_seg(x)
