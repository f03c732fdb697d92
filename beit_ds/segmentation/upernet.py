"""UperNet (Xiao et al. 2018) as the seed uses it on BEiT (App. A/B, Table 7; unilm's mmseg
``UPerHead``) and the FCN auxiliary head trained next to it (mmseg's ``FCNHead``, weight 0.4).

``UperHead``: a pyramid pooling module (PPM, pool scales 1/2/3/6) on the coarsest map, a
top-down FPN over the four maps, all maps resized to the finest one, concatenated, fused by a
3×3 conv and classified: ``4 × [B, D, H/s, W/s] -> [B, classes, H/4, W/4]``. Names are mmseg's
(``psp_modules.{i}.1``, ``bottleneck``, ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``,
``conv_seg``), so unilm checkpoints load as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from beit_ds.segmentation.layers import ConvBNReLU, resize


class ClassifierMixin(nn.Module):
    """mmseg's ``cls_seg``: Dropout2d(``dropout``) then a 1×1 ``conv_seg`` to class logits."""

    def _classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UperHead(ClassifierMixin):
    """PPM + FPN over four ``[B, dim, h_i, w_i]`` maps (finest first) → ``[B, classes, h_0, w_0]``."""

    def __init__(self, dim: int, channels: int, num_classes: int, pool_scales: tuple[int, ...],
                 dropout: float) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(dim, channels, 1)) for scale in pool_scales
        )
        self.bottleneck = ConvBNReLU(dim + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(dim, channels, 1) for _ in range(3))
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3, padding=1) for _ in range(3))
        self.fpn_bottleneck = ConvBNReLU(4 * channels, channels, 3, padding=1)
        self._classifier(channels, num_classes, dropout)

    def psp(self, x: torch.Tensor) -> torch.Tensor:
        """Pyramid pooling of the coarsest map: ``[B, dim, h, w] -> [B, channels, h, w]``."""
        pooled = [resize(module(x), x.shape[2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:3], strict=True)]
        laterals.append(self.psp(feats[3]))
        for i in range(3, 0, -1):  # top-down: each map gets the coarser one, upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:3], strict=True)] + [laterals[3]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(resize(o, size) for o in outs[1:])], dim=1))
        return self.cls_seg(fused)


class FCNHead(ClassifierMixin):
    """mmseg's ``FCNHead`` (``concat_input=False``) on map ``in_index``: ``num_convs`` × 3×3
    conv-BN-ReLU → classifier, ``[B, dim, h, w] -> [B, classes, h, w]``."""

    def __init__(self, dim: int, channels: int, num_classes: int, num_convs: int, dropout: float,
                 in_index: int = 2) -> None:
        super().__init__()
        self.in_index = in_index
        widths = [dim] + [channels] * num_convs
        self.convs = nn.Sequential(*(ConvBNReLU(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:])))
        self._classifier(widths[-1], num_classes, dropout)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.convs(feats[self.in_index]))
