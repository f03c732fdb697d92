"""Semantic-segmentation data sections: label sources and the joint image + label transform.

The defaults are the ADE20K pipeline of the BEiT segmentation code (unilm
``beit/semantic_segmentation/configs/_base_/datasets/ade20k.py``, run by mmseg 0.11; seed §3.2,
App. B); ``beit_ds/data/seg_transforms.py`` implements it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from beit_ds.config.data import LoaderConfig
from beit_ds.config.validate import choice, expect, pair, positive_int

SEG_SOURCES = ("ade20k", "pairs", "filelist")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # unilm img_norm_cfg mean=[123.675, 116.28, 103.53] / 255
IMAGENET_STD = (0.229, 0.224, 0.225)  # unilm img_norm_cfg std=[58.395, 57.12, 57.375] / 255


def _size_pair(s: str, key: str, value: Any) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    expect(ok, s, key, value, "two positive integers (long edge, short edge)")


@dataclass
class SegTransformConfig:
    """The mmseg training pipeline of unilm's ADE20K config, in its order, and its evaluation resize.

    * ``scale`` (2048, 512), ``ratio_range`` (0.5, 2.0): ``Resize(img_scale=(2048, 512),
      ratio_range=(0.5, 2.0))`` — a ratio drawn uniformly in ``ratio_range`` multiplies ``scale``;
      the image is rescaled, keeping its aspect, to fit long edge ≤ max, short edge ≤ min of it
      (mmcv ``imrescale``); image bilinear, label nearest.
    * ``crop_size`` 512, ``cat_max_ratio`` 0.75: ``RandomCrop(crop_size=(512, 512),
      cat_max_ratio=0.75)`` — up to 10 redraws until no class covers ``cat_max_ratio`` or more of
      the crop's non-ignored pixels (and at least two classes are present). The recipe derives the
      crop from ``model.img_size`` (640 for the ``_640`` configs, whose ``scale`` is (2560, 640)).
    * ``hflip`` 0.5: ``RandomFlip(prob=0.5)``.
    * ``photometric``: ``PhotoMetricDistortion()`` with mmseg's defaults — brightness ±32,
      contrast 0.5–1.5, saturation 0.5–1.5, hue ±18 (of 180), each with probability 1/2, contrast
      before or after the HSV steps at random.
    * ``mean`` / ``std`` in [0, 1] units: unilm's ``img_norm_cfg`` for every BEiT segmentation
      config is ImageNet's (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375) on 0–255 — not the
      (0.5, 0.5, 0.5) of BEiT pre-training and classification fine-tuning.
    * ``Pad(size=crop_size, pad_val=0, seg_pad_val=255)``: after normalisation, so padded image
      pixels are 0 and padded labels ignored (no key: always on).
    * ``eval_scale`` (2048, 512): the test pipeline's keep-ratio ``Resize`` of
      ``MultiScaleFlipAug(img_scale=(2048, 512), flip=False)``; labels stay at original size.
    """

    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_scale: tuple[int, int] = (2048, 512)

    def __post_init__(self) -> None:
        s = "data.transform"
        positive_int(s, "crop_size", self.crop_size)
        _size_pair(s, "scale", self.scale)
        lo, hi = pair(s, "ratio_range", self.ratio_range)
        expect(0 < lo <= hi, s, "ratio_range", self.ratio_range, "two numbers 0 < lo <= hi")
        ok = isinstance(self.cat_max_ratio, (int, float)) and 0 < self.cat_max_ratio <= 1
        expect(ok, s, "cat_max_ratio", self.cat_max_ratio, "a number in (0, 1] (1 disables the retry)")
        ok = isinstance(self.hflip, (int, float)) and 0 <= self.hflip <= 1
        expect(ok, s, "hflip", self.hflip, "a probability in [0, 1]")
        expect(isinstance(self.photometric, bool), s, "photometric", self.photometric, "true or false")
        expect(len(self.mean) == 3, s, "mean", self.mean, "three numbers (R, G, B) in [0, 1] units")
        ok = len(self.std) == 3 and all(v > 0 for v in self.std)
        expect(ok, s, "std", self.std, "three positive numbers (R, G, B) in [0, 1] units")
        _size_pair(s, "eval_scale", self.eval_scale)


@dataclass
class SegDataConfig(LoaderConfig):
    """Where images and their label maps come from (``beit_ds/data/seg_sources.py``).

    ``source``: ``"ade20k"`` (``path`` = the ``ADEChallengeData2016`` root with
    ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``; the
    evaluation split is ``validation`` of ``eval_path`` or, unset, of ``path``), ``"pairs"``
    (``path`` / ``eval_path`` are split folders, each holding ``image_dir`` and ``label_dir`` with
    files paired by their path below it: ``<stem><img_suffix>`` ↔ ``<stem><label_suffix>``) or
    ``"filelist"`` (``path`` / ``eval_path`` are text files of ``image,label`` lines relative to
    the list's folder). Label files hold one class index per pixel; ``ignore_index`` is the value
    that means void (11 for CamVid) and ``reduce_zero_label`` maps 0 to void and 1..K to 0..K-1
    (ADE20K's "other"); ``None`` = as the source implies (``reduces_zero_label``). How they are
    read: ``LoaderConfig`` (``repeats`` applies to training only).
    """

    source: str = "ade20k"
    image_dir: str = "images"
    label_dir: str = "labels"
    img_suffix: str = ".jpg"
    label_suffix: str = ".png"
    reduce_zero_label: bool | None = None
    ignore_index: int = 255
    transform: SegTransformConfig = dataclasses.field(default_factory=SegTransformConfig)

    def __post_init__(self) -> None:
        s = "data"
        choice(s, "source", self.source, SEG_SOURCES)
        expect(bool(self.path), s, "path", self.path, f"a path for data.source={self.source!r}")
        for key in ("image_dir", "label_dir", "img_suffix", "label_suffix"):
            value = getattr(self, key)
            expect(isinstance(value, str) and bool(value), s, key, value, "a non-empty string")
        ok = self.reduce_zero_label is None or isinstance(self.reduce_zero_label, bool)
        expect(
            ok, s, "reduce_zero_label", self.reduce_zero_label, "true, false or null (as the source implies)"
        )
        ok = isinstance(self.ignore_index, int) and not isinstance(self.ignore_index, bool)
        expect(
            ok and 0 <= self.ignore_index <= 65535,
            s,
            "ignore_index",
            self.ignore_index,
            "an integer in 0..65535",
        )
        super().__post_init__()
        ok = isinstance(self.transform, SegTransformConfig)
        expect(ok, s, "transform", self.transform, "a mapping")


def reduces_zero_label(data: SegDataConfig) -> bool:
    """``data.reduce_zero_label``, or when ``None`` what the source implies: ADE20K yes, others no."""
    if data.reduce_zero_label is not None:
        return data.reduce_zero_label
    return data.source == "ade20k"
