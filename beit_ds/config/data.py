"""Data sections: sources, the two-view transform and decoding limits (read by ``beit_ds/data/``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from beit_ds.config.validate import (
    choice,
    expect,
    fraction,
    non_negative_int,
    non_negative_number,
    pair,
    positive_int,
)

DATA_SOURCES = ("demo", "folder", "filelist", "shards", "archive")
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos")
TOKENIZER_VIEWS = ("dalle", "raw")


@dataclass
class TransformConfig:
    """Augmentation (seed §2.5, App. G): one random-resized crop gives two views.

    The crop covers a fraction in ``scale`` of the image area with an aspect ratio in ``ratio``; the
    patch view is ``input_size``² (``interpolation``), normalised by ``mean`` / ``std``; the tokenizer
    view is ``second_input_size``² (``second_interpolation``), prepared as ``tokenizer_view`` says
    (``"dalle"``: DALL-E ``map_pixels``, ``"raw"``: [0, 1] pixels). Both get the same horizontal flip
    (probability ``hflip``) and brightness / contrast / saturation jitter of strength ``color_jitter``
    (0 disables). Evaluation resizes so that a centre crop of ``crop_pct`` of the shorter side becomes
    ``input_size``². ``fast_decode``: JPEGs may decode at 1/2, 1/4 or 1/8 scale when the crop stays at
    least as large as the output (PIL's draft mode: faster, but not unilm's full decode — a crop of
    ≥ 2× the output comes out ≈ 34 dB PSNR against a full decode; ``false`` always decodes fully).
    """

    input_size: int = 224
    second_input_size: int = 112
    interpolation: str = "bicubic"
    second_interpolation: str = "lanczos"
    tokenizer_view: str = "dalle"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    color_jitter: float = 0.4
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_pct: float = 0.875
    fast_decode: bool = True

    def __post_init__(self) -> None:
        s = "data.transform"
        positive_int(s, "input_size", self.input_size)
        positive_int(s, "second_input_size", self.second_input_size)
        choice(s, "interpolation", self.interpolation, INTERPOLATIONS)
        choice(s, "second_interpolation", self.second_interpolation, INTERPOLATIONS)
        choice(s, "tokenizer_view", self.tokenizer_view, TOKENIZER_VIEWS)
        lo, hi = pair(s, "scale", self.scale)
        expect(0 < lo <= hi <= 1, s, "scale", self.scale, "two numbers 0 < lo <= hi <= 1")
        lo, hi = pair(s, "ratio", self.ratio)
        expect(0 < lo <= hi, s, "ratio", self.ratio, "two numbers 0 < lo <= hi")
        expect(0 <= self.hflip <= 1, s, "hflip", self.hflip, "a probability in [0, 1]")
        fraction(s, "color_jitter", self.color_jitter)
        expect(len(self.mean) == 3, s, "mean", self.mean, "three numbers (R, G, B)")
        ok = len(self.std) == 3 and all(v > 0 for v in self.std)
        expect(ok, s, "std", self.std, "three positive numbers (R, G, B)")
        expect(0 < self.crop_pct <= 1, s, "crop_pct", self.crop_pct, "a number in (0, 1]")


@dataclass
class LoaderConfig:
    """What every ``data`` section has (``DataConfig``, ``SegDataConfig``): where the images are
    (``source``, ``path``, ``eval_path``; each section says what they mean) and how the loader
    reads them.

    ``repeats``: every training image is visited this many times per epoch. ``num_workers``:
    loader processes (0: load in the training process), each ``prefetch_factor`` batches ahead,
    into pinned memory with ``pin_memory``. Undecodable images are skipped, counted and reported;
    more than ``max_skip_fraction`` of the distinct files read being bad is an error (1 disables).
    Images over ``max_image_pixels`` are skipped (decompression bombs). ``check_files``: how many
    paths of a file list are checked up front (0: none). ``timeout``: seconds the loader workers
    may deliver no batch before a one-line error (a read that hangs); 0 waits forever.
    """

    source: str = ""
    path: str = ""
    eval_path: str = ""
    repeats: int = 1
    num_workers: int = 8
    pin_memory: bool = True
    prefetch_factor: int = 2
    max_image_pixels: int = 89_478_485
    max_skip_fraction: float = 0.01
    check_files: int = 256
    timeout: float = 300.0

    def __post_init__(self) -> None:
        s = "data"
        positive_int(s, "repeats", self.repeats)
        non_negative_int(s, "num_workers", self.num_workers)
        positive_int(s, "prefetch_factor", self.prefetch_factor)
        positive_int(s, "max_image_pixels", self.max_image_pixels)
        ok = isinstance(self.max_skip_fraction, (int, float)) and 0 <= self.max_skip_fraction <= 1
        expect(ok, s, "max_skip_fraction", self.max_skip_fraction, "a number in [0, 1]")
        non_negative_int(s, "check_files", self.check_files)
        non_negative_number(s, "timeout", self.timeout)


@dataclass
class DataConfig(LoaderConfig):
    """Where images come from (formats in ``beit_ds/data``); how they are read: ``LoaderConfig``.

    ``source``: ``"demo"`` (scikit-image's bundled photographs; no ``path``), ``"folder"`` (images
    under ``path``; class = first sub-folder when every image sits in one), ``"filelist"`` (``path``
    is a text file of ``image[,label]`` lines relative to its folder), ``"shards"`` (a folder of
    WebDataset tar shards, see ``launch/make_shards.py``) or ``"archive"`` (a ``.tar`` read in place,
    a ``.tar.gz`` extracted once into ``cache_dir``). ``subdir``: a folder inside ``path`` or the
    archive. ``eval_path`` / ``eval_subdir``: the fine-tuning evaluation set (``""``: same as
    training).

    ``on_device``: for data sets that fit in memory, decode each split once into one uint8 tensor
    (cached in ``cache_dir``) held on the training device, and crop, flip, jitter, erase and mask
    whole batches there (``data/device_loader.py``; ``num_workers`` is then unused).
    ``on_device_size``: 0 requires every image to have the same size; N resizes each image's
    centred square to N × N at decode.
    """

    source: str = "demo"
    subdir: str = ""
    eval_subdir: str = ""
    cache_dir: str = ""
    on_device: bool = False
    on_device_size: int = 0
    transform: TransformConfig = dataclasses.field(default_factory=TransformConfig)

    def __post_init__(self) -> None:
        s = "data"
        choice(s, "source", self.source, DATA_SOURCES)
        expected = f"a path for data.source={self.source!r}"
        expect(bool(self.path) or self.source == "demo", s, "path", self.path, expected)
        super().__post_init__()
        expect(isinstance(self.on_device, bool), s, "on_device", self.on_device, "true or false")
        non_negative_int(s, "on_device_size", self.on_device_size)
        expect(isinstance(self.transform, TransformConfig), s, "transform", self.transform, "a mapping")
