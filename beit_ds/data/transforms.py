"""BEiT's two-view pre-training transform and the fine-tuning transforms (seed §2.5, App. G).

One random-resized crop per image gives the patch view (``input_size``², bicubic, normalised) and
the tokenizer view (``second_input_size``², Lanczos, ``map_pixels`` for DALL-E or raw [0, 1]); both
get the same flip and colour jitter. Every random choice comes from the ``numpy`` generator passed
in, seeded per sample from (seed, epoch, index), so a resumed run sees the same crops.

Order and deviations from the seed's reference pipeline (PIL decode → ColorJitter(0.4, 0.4, 0.4)
on the whole image → flip → crop → bicubic 224 + Lanczos 112), chosen for speed (``bench/loader.py``)
and measured there:

* the crop is chosen before decoding, so a JPEG whose crop is at least twice the output decodes
  at 1/2, 1/4 or 1/8 scale (``TransformConfig.fast_decode``; only ever a downscale);
* bicubic / bilinear resizing is torch's antialiased uint8 kernel (matches PIL to about ±1 level);
* a tokenizer view of the patch view's size and resampling (BEiT v2's VQ-KD reads the model's
  view) is the patch view itself, resized once;
* when the tokenizer view is half the patch view and the crop is downscaled to the patch view,
  the tokenizer view is the Lanczos reduction of the patch view (PIL's weights, ``lanczos_half``)
  instead of PIL's Lanczos of the crop (``bench/loader.py`` reports the PSNR, ≈ 46 dB);
  otherwise PIL's Lanczos of the crop;
* jitter runs on the two small views after the crop (timm's training order): brightness and
  saturation are per-pixel and commute with crop and resize up to clipping; contrast blends toward
  the mean grey of the crop rather than of the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from beit_ds.config import TransformConfig
from beit_ds.data.decode import EncodedImage, decode
from beit_ds.tokenizers.protocol import map_pixels

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's "L" conversion


# The tokenizer view's preparation, by ``VisualTokenizer.preprocess`` name.
TOKENIZER_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "dalle": map_pixels,  # DALL-E's [0.1, 0.9] input map
    "raw": lambda x: x,  # [0, 1] pixels: pixel-regression ablation and our own dVAE
}


@dataclass(frozen=True)
class CropBox:
    """A crop in displayed-image pixels."""

    left: int
    top: int
    width: int
    height: int


def random_resized_crop(
    size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> CropBox:
    """torchvision's RandomResizedCrop draw: area fraction in ``scale``, log-uniform aspect in ``ratio``,
    ten tries, then the largest centred crop with a clamped aspect."""
    width, height = size
    area, log_ratio = width * height, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
    return centred_crop(size, ratio)


def centred_crop(size: tuple[int, int], ratio: tuple[float, float]) -> CropBox:
    """RandomResizedCrop's fallback: the largest centred crop of ``size`` (W, H) with an aspect clamped to ``ratio``."""
    width, height = size
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return CropBox((width - w) // 2, (height - h) // 2, w, h)


def center_crop(size: tuple[int, int], crop_pct: float) -> CropBox:
    """The centred square of side ``crop_pct`` × the shorter side (resize-then-centre-crop evaluation)."""
    width, height = size
    side = max(1, int(round(min(width, height) * crop_pct)))
    return CropBox((width - side) // 2, (height - side) // 2, side, side)


@dataclass(frozen=True)
class Jitter:
    """Brightness, contrast and saturation factors and the order they are applied in."""

    brightness: float
    contrast: float
    saturation: float
    order: tuple[int, ...]


def draw_jitter(strength: float, rng: np.random.Generator) -> Jitter | None:
    """Factors uniform in ``[1 - strength, 1 + strength]``, random order (torchvision's ColorJitter)."""
    if strength <= 0:
        return None
    b, c, s = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
    return Jitter(float(b), float(c), float(s), tuple(int(i) for i in rng.permutation(3)))


_GRAY = torch.tensor(GRAY_WEIGHTS)


def apply_jitter(views: list[torch.Tensor], jitter: Jitter) -> None:
    """Jitter float [3, H, W] views in [0, 1] in place, identically; contrast uses view 0's mean.

    As torchvision: brightness scales, contrast blends with the mean grey, saturation blends with
    the grey image, each followed by clipping to [0, 1].
    """
    for op in jitter.order:
        if op == 0:
            for v in views:
                v.mul_(jitter.brightness).clamp_(0, 1)
        elif op == 1:
            mean = float(views[0].mean(dim=(1, 2)) @ _GRAY)  # mean of the grey image
            for v in views:
                v.mul_(jitter.contrast).add_((1 - jitter.contrast) * mean).clamp_(0, 1)
        else:
            for v in views:
                gray = torch.tensordot(_GRAY, v, dims=1)  # [H, W]
                v.mul_(jitter.saturation).add_(gray, alpha=1 - jitter.saturation).clamp_(0, 1)


_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_BLOCK = 16  # outputs per block of the banded Lanczos matrix


def _half_lanczos_block() -> torch.Tensor:
    """[2·B + 10, B]: PIL's Lanczos-3 weights for a 2x reduction, output i reading inputs 2i-5 … 2i+6."""
    offsets = (np.arange(-5, 7) - 0.5) / 2
    taps = np.sinc(offsets) * np.sinc(offsets / 3)
    block = np.zeros((2 * _BLOCK + 10, _BLOCK), dtype=np.float32)
    for o in range(_BLOCK):
        block[2 * o : 2 * o + 12, o] = taps
    return torch.from_numpy(block)


_HALF_BLOCK = _half_lanczos_block()  # [2B + 10, B]
_HALF_BLOCK_T = _HALF_BLOCK.t().contiguous()  # [B, 2B + 10]


def _half_last(x: torch.Tensor) -> torch.Tensor:
    """[R, W] → [R, W // 2] along the last axis, unnormalised: the band matrix block by block."""
    rows, n = x.shape[0], x.shape[1] // 2
    blocks = -(-n // _BLOCK)
    padded = F.pad(x, (5, 6 + 2 * (blocks * _BLOCK - n)))
    windows = padded.as_strided((rows, blocks, 2 * _BLOCK + 10), (padded.stride(0), 2 * _BLOCK, 1))
    out = windows.reshape(rows * blocks, -1) @ _HALF_BLOCK
    return out.view(rows, blocks * _BLOCK)[:, :n]


def _half_middle(x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] → [C, H // 2, W] along the middle axis, unnormalised."""
    c, h, w = x.shape
    n = h // 2
    blocks = -(-n // _BLOCK)
    padded = F.pad(x, (0, 0, 5, 6 + 2 * (blocks * _BLOCK - n)))
    s = padded.stride()
    windows = padded.as_strided((c, blocks, 2 * _BLOCK + 10, w), (s[0], 2 * _BLOCK * s[1], s[1], s[2]))
    return torch.matmul(_HALF_BLOCK_T, windows).reshape(c, blocks * _BLOCK, w)[:, :n]


@lru_cache(maxsize=16)
def _half_norm(n: int) -> torch.Tensor:
    """[n // 2]: the weight each output's window keeps inside the image (PIL renormalises by it)."""
    return _half_last(torch.ones(1, n))[0]


def lanczos_half(x: torch.Tensor) -> torch.Tensor:
    """PIL's Lanczos resize to half size, in float: [C, H, W] in [0, 1] → [C, H / 2, W / 2].

    Windows clipped at the borders are renormalised (PIL's rule). Agrees with PIL to ±1 level
    (PIL rounds to 8 bits between its two passes) at about half its cost.
    """
    c, h, w = x.shape
    rows = _half_last(x.reshape(c * h, w)).div_(_half_norm(w)).view(c, h, w // 2)
    return _half_middle(rows).div_(_half_norm(h).view(1, -1, 1)).clamp_(0, 1)


class Region:
    """The crop of a decoded image: the RGB ``image`` and the crop ``box`` in its pixels."""

    def __init__(self, enc: EncodedImage, crop: CropBox, out_size: int, fast: bool) -> None:
        reduce = min(crop.width, crop.height) / out_size if fast else 1.0
        self.image, s = decode(enc, reduce)
        w, h = self.image.size
        self.box = (
            crop.left * s,
            crop.top * s,
            min((crop.left + crop.width) * s, w),
            min((crop.top + crop.height) * s, h),
        )

    @property
    def min_side(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def resize(self, size: int, interpolation: str) -> torch.Tensor:
        """uint8 [3, size, size]: torch's antialiased kernels, or PIL for Lanczos."""
        if interpolation == "lanczos":
            out = self.image.resize((size, size), _PIL_FILTERS[interpolation], box=self.box)
            return torch.from_numpy(np.array(out)).permute(2, 0, 1)
        left, top, right, bottom = (int(round(v)) for v in self.box)
        right, bottom = max(right, left + 1), max(bottom, top + 1)
        crop = torch.from_numpy(np.array(self.image.crop((left, top, right, bottom))))
        x = crop.permute(2, 0, 1).unsqueeze(0)  # channels-last memory: torch's fast uint8 path
        return F.interpolate(x, size=(size, size), mode=interpolation, antialias=True)[0]


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().float().div_(255.0)


class _Views:
    """Shared by the transforms: decode the crop, resize, flip, jitter; float views in [0, 1]."""

    def __init__(self, cfg: TransformConfig) -> None:
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    def make(
        self, enc: EncodedImage, crop: CropBox, two: bool, flip: bool, jitter: Jitter | None
    ) -> list[torch.Tensor]:
        """Float views in [0, 1]: the patch view [3, S, S] and, when ``two``, the tokenizer view
        [3, s, s], cut from ``crop`` of ``enc``, flipped and jittered alike."""
        cfg = self.cfg
        out_size = max(cfg.input_size, cfg.second_input_size) if two else cfg.input_size
        region = Region(enc, crop, out_size, cfg.fast_decode)
        patch_u8 = region.resize(cfg.input_size, cfg.interpolation)
        views = [_to_unit(patch_u8)]
        if two:
            same = (cfg.second_input_size, cfg.second_interpolation) == (cfg.input_size, cfg.interpolation)
            half = cfg.second_input_size * 2 == cfg.input_size and region.min_side >= cfg.input_size
            if same:  # the tokenizer reads the patch view itself (BEiT v2): resized once
                views.append(views[0].clone())
            elif half and cfg.second_interpolation == "lanczos":  # the patch view holds all the detail
                views.append(lanczos_half(views[0]).contiguous())
            else:
                views.append(_to_unit(region.resize(cfg.second_input_size, cfg.second_interpolation)))
        if flip:
            views = [v.flip(-1) for v in views]
        if jitter is not None:
            apply_jitter(views, jitter)
        return views

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(self.mean).div_(self.std)


class TwoViewTransform(_Views):
    """Pre-training: patch view [3, S, S] (normalised) and tokenizer view [3, s, s] of one crop."""

    def __call__(self, enc: EncodedImage, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        crop = random_resized_crop(enc.size, cfg.scale, cfg.ratio, rng)
        flip = bool(rng.random() < cfg.hflip)
        patch, token = self.make(enc, crop, True, flip, draw_jitter(cfg.color_jitter, rng))
        return self.normalize(patch), TOKENIZER_VIEWS[cfg.tokenizer_view](token)


class TrainTransform(_Views):
    """Fine-tuning: random-resized crop, flip, jitter; normalised [3, S, S]."""

    def unnormalized(self, enc: EncodedImage, rng: np.random.Generator) -> torch.Tensor:
        """The cropped, flipped, jittered view in [0, 1] (``data/augment.py`` continues from here)."""
        cfg = self.cfg
        crop = random_resized_crop(enc.size, cfg.scale, cfg.ratio, rng)
        flip = bool(rng.random() < cfg.hflip)
        return self.make(enc, crop, False, flip, draw_jitter(cfg.color_jitter, rng))[0]

    def __call__(self, enc: EncodedImage, rng: np.random.Generator) -> torch.Tensor:
        return self.normalize(self.unnormalized(enc, rng))


class EvalTransform(_Views):
    """Evaluation: centre crop of ``crop_pct`` of the shorter side, resized; normalised [3, S, S]."""

    def __call__(self, enc: EncodedImage, rng: np.random.Generator | None = None) -> torch.Tensor:
        crop = center_crop(enc.size, self.cfg.crop_pct)
        return self.normalize(self.make(enc, crop, False, False, None)[0])
