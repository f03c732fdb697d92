"""Joint image + label-map transforms of semantic segmentation (seed §3.2, App. B).

The mmseg 0.11 pipeline that unilm's BEiT ADE20K configs run (``SegTransformConfig`` says where
each number comes from), as pure functions of a ``numpy`` generator seeded per (seed, epoch,
index): random keep-ratio resize → random crop with the max-category-ratio retry → horizontal flip
→ photometric distortion (image only, 8-bit arithmetic as mmseg) → normalise → pad (image 0, label
``IGNORE``). Evaluation resizes the image keep-ratio and leaves the label at its original size.

Label maps arrive as ``LabelMap`` leaves them: int32 [H, W], classes 0..K-1, ``IGNORE`` = void.
Images are uint8 [H, W, 3] RGB until ``normalize``. Deviations from mmseg (cv2): bilinear resizing
is torch's (half-pixel centres, no antialiasing, as cv2 ``INTER_LINEAR``; up to ±1 level); labels
are resized nearest with half-pixel centres (PIL's ``NEAREST``, torch's ``nearest-exact``), which
keeps them aligned with the bilinear image — cv2's ``INTER_NEAREST`` shifts by up to one source
pixel; HSV is OpenCV's 8-bit convention (H in [0, 180)) computed in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from beit_ds.config import SegTransformConfig
from beit_ds.data.skips import DataError

IGNORE = 255  # the ignore value of every label batch (mmseg's seg_pad_val and loss ignore_index)
CROP_TRIES = 10  # mmseg RandomCrop: redraws while one class dominates
BRIGHTNESS_DELTA = 32.0  # mmseg PhotoMetricDistortion defaults
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


@dataclass(frozen=True)
class LabelMap:
    """File values → training labels: ``reduce_zero_label`` (0 → void, v → v - 1), then the file's
    ``ignore_index`` → ``IGNORE``; any other value must lie in 0..``num_classes``-1 (a 16- or
    32-bit label map may hold negative values)."""

    num_classes: int
    reduce_zero_label: bool = False
    ignore_index: int = IGNORE

    def __post_init__(self) -> None:
        if not 0 < self.num_classes < IGNORE:
            raise ValueError(
                f"num_classes={self.num_classes}: expected 1..{IGNORE - 1} ({IGNORE} means ignore)"
            )

    def __call__(self, raw: np.ndarray, path: str) -> np.ndarray:
        """[H, W] file values → int32 [H, W] labels in 0..K-1 or ``IGNORE``; a stray value is a
        ``DataError`` naming ``path`` (a recipe that does not fit its data, never a skip)."""
        values = raw.astype(np.int32, copy=False)
        void = values == self.ignore_index
        if self.reduce_zero_label:
            void |= values == 0
            values = values - 1
        labels = np.where(void, IGNORE, values).astype(np.int32)
        bad = labels[~void & ((labels < 0) | (labels >= self.num_classes))]
        if bad.size:
            value = int(bad[0]) + int(self.reduce_zero_label)
            raise DataError(f"{path}: label value {value} outside {self.expected()}")
        return labels

    def expected(self) -> str:
        k, lo = self.num_classes, int(self.reduce_zero_label)
        classes = f"classes {lo}..{k - 1 + lo}"
        void = f"void {self.ignore_index}" + (" or 0" if self.reduce_zero_label else "")
        return f"{classes}, {void} (num_classes={k}, reduce_zero_label={self.reduce_zero_label})"


def keep_ratio_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: (W, H) scaled so that long ≤ max(scale) and short ≤ min(scale)."""
    w, h = size
    factor = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))


def random_scale(
    base: tuple[int, int], ratio_range: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int]:
    """mmseg ``Resize.random_sample_ratio``: ``base`` × a ratio uniform in ``ratio_range``."""
    lo, hi = ratio_range
    ratio = lo + float(rng.random()) * (hi - lo)
    return int(base[0] * ratio), int(base[1] * ratio)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] → uint8 [h, w, 3] with ``size`` = (w, h), bilinear."""
    w, h = size
    if image.shape[:2] == (h, w):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    # torch's uint8 kernel (channels-last): the float one, rounded, to ±1 level, and 10x faster
    y = F.interpolate(
        x.contiguous(memory_format=torch.channels_last),
        size=(h, w),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )
    return np.ascontiguousarray(y[0].permute(1, 2, 0).numpy())


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] → [h, w] nearest, sampling source pixel ``floor((i + 0.5) · H / h)``."""
    w, h = size
    height, width = label.shape
    if (height, width) == (h, w):
        return label
    rows = np.minimum(((np.arange(h) + 0.5) * height / h).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * width / w).astype(np.int64), width - 1)
    return label[rows[:, None], cols[None, :]]


def crop_origin(
    label: np.ndarray, crop: int, cat_max_ratio: float, rng: np.random.Generator
) -> tuple[int, int]:
    """mmseg ``RandomCrop``: (top, left) of a ``crop``² window (clipped by the image), redrawn up to
    ``CROP_TRIES`` times while it holds one class only or one class covers ≥ ``cat_max_ratio`` of its
    non-ignored pixels (the last draw is kept as it is)."""
    height, width = label.shape

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, max(height - crop, 0) + 1)), int(rng.integers(0, max(width - crop, 0) + 1))

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(CROP_TRIES):
            counts = np.bincount(label[top : top + crop, left : left + crop].ravel(), minlength=IGNORE + 1)[
                :IGNORE
            ]
            if np.count_nonzero(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return top, left


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion.convert``: ``x · alpha + beta``, clipped, truncated to uint8."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB → uint8 [H, W, 3] HSV, OpenCV's 8-bit convention (H = degrees / 2)."""
    r, g, b = (image[..., i].astype(np.float32) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    out = np.empty(image.shape, dtype=np.uint8)
    out[..., 2] = v
    out[..., 1] = np.round(diff * 255 / np.maximum(v, 1))  # 0 where v = 0 (then diff = 0)
    scale = 30 / np.maximum(diff, 1e-6)  # degrees / 2 per unit of the channel difference
    h = np.where(v == b, 120 + (r - g) * scale, 0)
    h = np.where(v == g, 60 + (b - r) * scale, h)
    h = np.where(v == r, (g - b) * scale, h)  # OpenCV's precedence: R, then G, then B
    h = np.where(diff > 0, np.round(h), 0)
    out[..., 0] = np.where(h < 0, h + 180, h) % 180
    return out


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """The inverse of ``rgb_to_hsv``: uint8 [H, W, 3] HSV (H in [0, 180)) → uint8 RGB."""
    sector = hsv[..., 0].astype(np.float32) / 30  # hue / 60 degrees
    chroma = hsv[..., 1].astype(np.float32) * hsv[..., 2].astype(np.float32) / 255  # v · s
    v = hsv[..., 2].astype(np.float32)
    out = np.empty(hsv.shape, dtype=np.uint8)
    for channel, n in enumerate((5, 3, 1)):  # the closed form f(n) = v - v s max(0, min(k, 4 - k, 1))
        k = (sector + n) % 6
        out[..., channel] = np.clip(np.round(v - chroma * np.clip(np.minimum(k, 4 - k), 0, 1)), 0, 255)
    return out


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on uint8 [H, W, 3]: brightness, contrast (first or last, at
    random), saturation, hue; each applied with probability 1/2, each step rounding to uint8."""
    out = _convert(image, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)) if rng.integers(2) else image
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        out = _convert(out, alpha=rng.uniform(*CONTRAST_RANGE))
    if rng.integers(2):
        hsv = rgb_to_hsv(out)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*SATURATION_RANGE))
        out = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(out)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-HUE_DELTA, HUE_DELTA)) % 180
        out = hsv_to_rgb(hsv)
    if not contrast_first and rng.integers(2):
        out = _convert(out, alpha=rng.uniform(*CONTRAST_RANGE))
    return out


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [H, W, 3] → float32 [3, H, W]: ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return x.sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))


def pad_to(image: torch.Tensor, label: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mmseg ``Pad``: image [3, h, w] with 0 and label [h, w] with ``IGNORE`` to ``size``² (bottom, right)."""
    h, w = label.shape
    out = image.new_zeros(3, max(h, size), max(w, size))
    out[:, :h, :w] = image
    labels = torch.full(out.shape[1:], IGNORE, dtype=torch.int64)
    labels[:h, :w] = torch.from_numpy(np.ascontiguousarray(label))
    return out, labels


class SegTrainTransform:
    """(uint8 [H, W, 3], int32 [H, W], rng) → (float32 [3, c, c], int64 [c, c]), c = ``crop_size``."""

    def __init__(self, cfg: SegTransformConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, c = self.cfg, self.cfg.crop_size
        size = keep_ratio_size(
            (image.shape[1], image.shape[0]), random_scale(cfg.scale, cfg.ratio_range, rng)
        )
        image, label = resize_image(image, size), resize_label(label, size)
        top, left = crop_origin(label, c, cfg.cat_max_ratio, rng)
        image, label = image[top : top + c, left : left + c], label[top : top + c, left : left + c]
        if rng.random() < cfg.hflip:
            image, label = image[:, ::-1], label[:, ::-1]
        if cfg.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        return pad_to(normalize(image, cfg.mean, cfg.std), label, c)


class SegEvalTransform:
    """(uint8 [H, W, 3], int32 [H, W], rng) → (float32 [3, h, w] resized keep-ratio to
    ``eval_scale``, int64 [H, W] at the original size); nothing random."""

    def __init__(self, cfg: SegTransformConfig) -> None:
        self.cfg = cfg

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = keep_ratio_size((image.shape[1], image.shape[0]), self.cfg.eval_scale)
        image_t = normalize(resize_image(image, size), self.cfg.mean, self.cfg.std)
        return image_t, torch.from_numpy(np.ascontiguousarray(label)).to(torch.int64)
