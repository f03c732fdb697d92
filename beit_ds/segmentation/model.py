"""``BeitForSegmentation``: the BEiT backbone with a segmentation task layer (seed §2.6, §3.2).

The model composes (house style rule 22): ``backbone`` is a ``Beit`` pruned after the last of
``decode.out_indices`` (no final norm: unilm's segmentation backbone has none), whose
``forward_intermediates`` gives the four chosen blocks as ``[B, D, H/p, W/p]`` maps at any input
size; ``neck`` is the UperNet pyramid (``FeaturePyramid``; identity for SETR-PUP);
``decode_head`` is ``UperHead`` or ``SETRUpHead``; ``auxiliary_head`` the FCN head (UperNet) or
SETR's three upsampling heads, or None. The loss is mmseg's: logits resized (bilinear) to the
label size, per-pixel cross-entropy with 255 ignored, decode + ``aux_weight`` × each auxiliary;
the mean runs over all pixels, ignored ones counting 0, as mmseg 0.x (unilm's) computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import ModelConfig
from beit_ds.config.segmentation import DecoderConfig
from beit_ds.models.beit import Beit
from beit_ds.segmentation.layers import resize
from beit_ds.segmentation.pyramid import FeaturePyramid
from beit_ds.segmentation.setr import SETRUpHead
from beit_ds.segmentation.upernet import FCNHead, UperHead

IGNORE = 255


@dataclass
class SegOutput:
    """``logits [B, classes, h, w]`` at the decoder's stride (4 for UperNet, 1 for SETR-PUP);
    with labels, ``loss`` (scalar, decode + weighted auxiliary) and detached ``metrics``."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def seg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """mmseg 0.x's loss: ``logits [B, C, h, w]`` resized to ``labels [B, H, W]``, per-pixel
    cross-entropy (255 ignored, counting 0), mean over all ``B·H·W`` pixels."""
    return _pixel_cross_entropy(resize(logits.float(), labels.shape[-2:]), labels, smoothing)


def _pixel_cross_entropy(up: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(up, labels, ignore_index=IGNORE, reduction="none", label_smoothing=smoothing).mean()


def pixel_accuracy(up: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of non-ignored pixels predicted right by logits ``up`` already at the label size
    (mmseg's ``acc_seg``, as a fraction), no host sync."""
    pred = up.detach().argmax(1)
    valid = labels != IGNORE
    return ((pred == labels) & valid).sum() / valid.sum().clamp_min(1)


def _init_decoder(module: nn.Module) -> None:
    """mmcv's inits: convs of ``ConvBNReLU`` Kaiming-normal (fan-out, ReLU), norms 1 / 0,
    classifiers normal(0, 0.01); transposed convolutions keep torch's default (as unilm)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and name.endswith("conv_seg") and m.bias is not None:
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _heads(dim: int, d: DecoderConfig) -> tuple[nn.Module, nn.Module | None]:
    """``(decode_head, auxiliary_head)`` for ``d.head``."""
    if d.head == "setr_pup":
        aux = nn.ModuleList(
            SETRUpHead(dim, d.aux_channels, d.num_classes, d.aux_num_convs, 4, d.dropout, in_index=i) for i in range(3)
        )
        head = SETRUpHead(dim, d.channels, d.num_classes, d.up_convs, 2, d.dropout, in_index=3)
        return head, aux if d.auxiliary else None
    head_u = UperHead(dim, d.channels, d.num_classes, d.pool_scales, d.dropout)
    aux_u = FCNHead(dim, d.aux_channels, d.num_classes, d.aux_num_convs, d.dropout) if d.auxiliary else None
    return head_u, aux_u


class BeitForSegmentation(nn.Module):
    """Backbone + neck + decode head (+ auxiliary head): ``[B, 3, H, W] -> SegOutput``."""

    def __init__(self, model: ModelConfig, decode: DecoderConfig, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if decode.out_indices[-1] >= model.depth:
            raise ValueError(f"decode.out_indices={list(decode.out_indices)}: model.depth={model.depth} has blocks"
                             f" 0..{model.depth - 1}")
        self.decode_cfg, self.label_smoothing = decode, label_smoothing
        self.backbone = Beit(replace(model, global_pool="none", num_classes=0))
        self.backbone.prune_intermediate_layers(list(decode.out_indices), prune_norm=True, prune_head=True)
        self.decode_head, self.auxiliary_head = _heads(model.embed_dim, decode)
        upernet = decode.head == "upernet"
        self.neck = FeaturePyramid(model.embed_dim, model.patch_size) if upernet else nn.Identity()
        for part in (self.neck, self.decode_head, self.auxiliary_head):
            if part is not None:
                _init_decoder(part)

    @property
    def num_classes(self) -> int:
        return self.decode_cfg.num_classes

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The neck's maps of ``images [B, 3, H, W]`` (``H``, ``W`` multiples of the patch size)."""
        feats = self.backbone.forward_intermediates(
            images, indices=list(self.decode_cfg.out_indices), intermediates_only=True, output_fmt="NCHW"
        )
        return self.neck(feats)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Decode-head logits ``[B, classes, h, w]`` (what inference calls)."""
        return self.decode_head(self.features(images))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> SegOutput:
        """``images [B, 3, H, W]``, ``labels [B, H, W]`` int64 (255 = ignore) or None."""
        feats = self.features(images)
        logits = self.decode_head(feats)
        if labels is None:
            return SegOutput(logits)
        up = resize(logits.float(), labels.shape[-2:])  # once, for the loss and the accuracy
        decode = _pixel_cross_entropy(up, labels, self.label_smoothing)
        metrics = {"decode_loss": decode.detach(), "pixel_accuracy": pixel_accuracy(up, labels)}
        loss = decode
        if self.auxiliary_head is not None:
            heads = self.auxiliary_head if isinstance(self.auxiliary_head, nn.ModuleList) else [self.auxiliary_head]
            aux = torch.stack([seg_cross_entropy(h(feats), labels, self.label_smoothing) for h in heads]).sum()
            metrics["aux_loss"] = aux.detach()
            loss = loss + self.decode_cfg.aux_weight * aux
        return SegOutput(logits, loss, metrics)
