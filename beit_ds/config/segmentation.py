"""Segmentation sections: the decoder on the BEiT backbone and how evaluation infers (seed §3.2,
App. A, B, I). Defaults are unilm's ADE20K UperNet for BEiT-B
(``beit/semantic_segmentation/configs/beit/upernet/upernet_beit_base_12_512_slide_160k_ade20k_pt.py``
on mmseg's ``UPerHead`` / ``FCNHead`` defaults). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from beit_ds.config.validate import choice, expect, fraction, non_negative_int, number, positive_int

DECODE_HEADS = ("upernet", "setr_pup")
NORMS = ("sync_bn", "bn")
INFERENCE_MODES = ("whole", "slide")


def _int_list(section: str, key: str, value: object, expected: str) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)  # type: ignore[attr-defined]
    expect(ok, section, key, value, expected)


@dataclass
class DecoderConfig:
    """The task layer on the backbone.

    ``head``: ``"upernet"`` (UperNet: a 4-level pyramid at strides 4/8/16/32 made from blocks
    ``out_indices`` by transposed convolutions / identity / max-pooling, then PPM with
    ``pool_scales`` + FPN; seed App. A/B, Table 7) or ``"setr_pup"`` (SETR's progressive
    upsampling: ``up_convs`` × (3×3 conv-BN-ReLU, ×2 bilinear) on the last of ``out_indices``;
    the seed's §3.2 / Table 3 head). ``out_indices``: 0-based blocks whose outputs are the
    features (unilm: 3, 5, 7, 11 for B; 7, 11, 15, 23 for L). ``channels``: the decoder width
    (unilm: 768 for B, 1024 for L — Hugging Face's ``BeitForSemanticSegmentation`` fixes it to the
    backbone width; SETR-PUP: 256). ``dropout``: before the classifier (mmseg's 0.1).
    ``auxiliary``: an auxiliary head with loss weight ``aux_weight`` (0.4) — for UperNet mmseg's
    FCN head on feature 2 (``aux_channels`` 256, ``aux_num_convs`` 1), for SETR-PUP SETR's
    two-conv upsampling heads on features 0, 1 and 2. ``norm``: ``"sync_bn"`` (BatchNorm
    synchronised over ranks when distributed, as unilm's SyncBN) or ``"bn"``. ``class_names``:
    for the per-class tables (``num_classes`` names, or empty).
    """

    head: str = "upernet"
    num_classes: int = 150
    out_indices: tuple[int, ...] = (3, 5, 7, 11)
    channels: int = 768
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    up_convs: int = 4
    dropout: float = 0.1
    auxiliary: bool = True
    aux_channels: int = 256
    aux_num_convs: int = 1
    aux_weight: float = 0.4
    norm: str = "sync_bn"
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        s = "decode"
        choice(s, "head", self.head, DECODE_HEADS)
        positive_int(s, "num_classes", self.num_classes)
        _int_list(s, "out_indices", self.out_indices, "a list of 0-based block indices")
        expect(len(self.out_indices) == 4, s, "out_indices", self.out_indices, "four block indices")
        ok = all(i >= 0 for i in self.out_indices) and list(self.out_indices) == sorted(set(self.out_indices))
        expect(ok, s, "out_indices", self.out_indices, "increasing 0-based block indices")
        positive_int(s, "channels", self.channels)
        _int_list(s, "pool_scales", self.pool_scales, "a list of positive integers")
        expect(all(p > 0 for p in self.pool_scales), s, "pool_scales", self.pool_scales, "positive integers")
        positive_int(s, "up_convs", self.up_convs)
        fraction(s, "dropout", self.dropout)
        positive_int(s, "aux_channels", self.aux_channels)
        non_negative_int(s, "aux_num_convs", self.aux_num_convs)
        number(s, "aux_weight", self.aux_weight, 0, 100, "a number >= 0")
        choice(s, "norm", self.norm, NORMS)
        ok = len(self.class_names) in (0, self.num_classes) and all(isinstance(n, str) for n in self.class_names)
        expect(ok, s, "class_names", self.class_names, f"decode.num_classes={self.num_classes} names or none")


@dataclass
class InferenceConfig:
    """How a validation image is predicted (mmseg's ``test_cfg``): ``"whole"`` (the resized image
    at once) or ``"slide"`` (``crop``² windows every ``stride`` pixels, logits averaged where they
    overlap; unilm: crop 512 / stride 341, crop 640 / stride 426). ``crop`` ``0``: the training
    crop (``model.img_size``). ``scales`` (ratios of ``data.transform.eval_scale``) and ``flip``:
    multi-scale / flip testing, softmax averaged (unilm's ``_ms`` configs: 0.5 … 1.75 + flip).
    ``overlays``: validation images written as prediction PNGs after each evaluation."""

    mode: str = "slide"
    crop: int = 0
    stride: int = 341
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    overlays: int = 4

    def __post_init__(self) -> None:
        s = "inference"
        choice(s, "mode", self.mode, INFERENCE_MODES)
        non_negative_int(s, "crop", self.crop)
        positive_int(s, "stride", self.stride)
        ok = isinstance(self.scales, (list, tuple)) and len(self.scales) > 0
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in self.scales)
        expect(ok, s, "scales", self.scales, "a list of positive ratios")
        non_negative_int(s, "overlays", self.overlays)
