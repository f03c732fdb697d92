"""BEiT's views of a whole batch on the device (seed §2.5, App. G, H): the on-device path's
``transforms.py`` and random erasing of ``augment.py``.

Each sample's parameters — the random-resized crop (torchvision's draw: area fraction in
``scale``, log-uniform aspect in ``ratio``, ten tries, then the largest centred crop), the flip,
the colour-jitter factors and order, the erasing box — come from the counter hash
(``counter_rng``) keyed by (seed, epoch, index), drawn for the batch at once on the CPU (a few
numbers per sample; identical on every device) and moved to the images' device. The pixels are
then cut on the device: crop + resize + flip as two matrix products (``resample.py``), jitter and
erasing as batched tensor ops. The patch view and the tokenizer view come from the same crop, flip
and jitter, as in ``TwoViewTransform``. The values differ from the PIL path's (another generator,
no 8-bit rounding of the views); the distributions are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from beit_ds.config import TransformConfig
from beit_ds.data.counter_rng import normal, sample_keys, uniform
from beit_ds.data.resample import resized_crops
from beit_ds.data.transforms import GRAY_WEIGHTS, TOKENIZER_VIEWS, center_crop, centred_crop

VIEW_STREAM = 0x7472  # "tr": crop, flip, jitter, erasing box
NOISE_STREAM = 0x6E7A  # "nz": the erased pixels' noise
TRIES = 10  # torchvision's tries for a crop or an erasing box
CROP, FLIP, JITTER, ERASE = 0, 4 * TRIES, 4 * TRIES + 1, 4 * TRIES + 7  # first draw of each
DRAWS = ERASE + 1 + 4 * TRIES
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision RandomErasing's defaults
NOISE_CHUNK = 1 << 22  # noise values hashed at once (bounds the int64 temporaries)


@dataclass(frozen=True)
class Draws:
    """The samples ``indices [B]`` (int64, CPU) of ``epoch``, whose draws are keyed by ``seed``."""

    seed: int
    epoch: int
    indices: torch.Tensor

    def uniform(self) -> torch.Tensor:
        """``[B, DRAWS]`` float64 uniforms of the view parameters (CPU)."""
        return uniform(sample_keys(self.seed, self.epoch, VIEW_STREAM, self.indices), 0, DRAWS).double()


def _first_fit(ok: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values [B, T]`` at each row's first True of ``ok [B, T]`` (row 0 where none)."""
    return values.gather(1, ok.to(torch.int8).argmax(dim=1, keepdim=True)).squeeze(1)


def _boxes(u: torch.Tensor, size: tuple[int, int], scale: tuple[float, float], log_ratio: tuple[float, float],
           area: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``TRIES`` boxes of ``area · U(scale)`` pixels and aspect ``exp(U(log_ratio))`` per row of
    ``u [B, 4 TRIES]``: (left, top, width, height) ``[B, TRIES, 4]``, and which fit ``size`` (W, H)
    strictly (``lt``) or not (``le``), ``[B, TRIES]`` each."""
    u = u.view(u.shape[0], TRIES, 4)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[..., 1])
    w, h = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    left = torch.floor(u[..., 2] * (size[0] - w + 1))
    top = torch.floor(u[..., 3] * (size[1] - h + 1))
    le = (w > 0) & (w <= size[0]) & (h > 0) & (h <= size[1])
    lt = (w < size[0]) & (h < size[1])
    return torch.stack([left, top, w, h], dim=2), lt, le


def draw_crops(u: torch.Tensor, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """torchvision's RandomResizedCrop for each row of ``u [B, 4 TRIES]``: ``[B, 4]`` float64
    (left, top, width, height) in the pixels of an image of ``size`` (W, H)."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes, _, ok = _boxes(u, size, scale, log_ratio, float(size[0] * size[1]))
    picked = torch.stack([_first_fit(ok, boxes[..., k]) for k in range(4)], dim=1)
    fallback = centred_crop(size, ratio)
    fixed = torch.tensor([fallback.left, fallback.top, fallback.width, fallback.height], dtype=u.dtype)
    return torch.where(ok.any(dim=1, keepdim=True), picked, fixed)


def draw_jitter(u: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter(strength) for each row of ``u [B, 6]``: factors ``[B, 3]`` (brightness, contrast,
    saturation, uniform in [max(0, 1 - s), 1 + s]) and the order of the three ops ``[B, 3]``."""
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * u[:, :3], u[:, 3:].argsort(dim=1)


def apply_jitter(views: list[torch.Tensor], factors: torch.Tensor, order: torch.Tensor) -> None:
    """Jitter float ``[B, 3, H, W]`` views in [0, 1] in place, each sample's ops in its order; the
    contrast op blends toward the mean grey of view 0 (``transforms.apply_jitter``)."""
    device = views[0].device  # copies that never wait for the device (no host sync per batch)
    factors = factors.to(device, torch.float32, non_blocking=True)
    order = order.to(device, non_blocking=True)
    for step in range(3):
        op = order[:, step].view(-1, 1, 1, 1)
        f = factors.gather(1, order[:, step : step + 1]).view(-1, 1, 1, 1)
        # x f + (1 - f) g with g = 0 (brightness), the mean grey (contrast) or the grey image (saturation)
        contrast, saturation = (1.0 - f) * (op == 1), (1.0 - f) * (op == 2)
        greys = [_grey(v) for v in views]
        mean = greys[0].mean(dim=(2, 3), keepdim=True)
        for v, grey in zip(views, greys):
            v.mul_(f).add_(grey * saturation + mean * contrast).clamp_(0.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` → ``[B, 1, H, W]``: ITU-R 601 luma."""
    r, g, b = GRAY_WEIGHTS
    return x[:, 0:1] * r + x[:, 1:2] * g + x[:, 2:3] * b


def draw_erasing(u: torch.Tensor, p: float, size: int) -> torch.Tensor:
    """torchvision's RandomErasing(p) box for each row of ``u [B, 1 + 4 TRIES]`` on a ``size²``
    view: ``[B, 4]`` float64 (left, top, width, height), zero-sized where nothing is erased."""
    log_ratio = (-math.log(ERASE_RATIO[1]), -math.log(ERASE_RATIO[0]))  # torchvision: height = sqrt(area · ratio)
    boxes, ok, _ = _boxes(u[:, 1:], (size, size), ERASE_SCALE, log_ratio, float(size * size))
    picked = torch.stack([_first_fit(ok, boxes[..., k]) for k in range(4)], dim=1)
    erase = (u[:, 0] < p) & ok.any(dim=1)
    return torch.where(erase.unsqueeze(1), picked, torch.zeros_like(picked))


def erase(x: torch.Tensor, boxes: torch.Tensor, noise_keys: torch.Tensor) -> torch.Tensor:
    """``x [B, C, S, S]`` with each sample's box (``draw_erasing``) replaced by normal noise drawn
    from ``noise_keys [B]`` (on ``x``'s device)."""
    b, c, h, w = x.shape
    boxes = boxes.to(x.device, torch.float32, non_blocking=True)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    left, top, width, height = (boxes[:, k].view(b, 1, 1, 1) for k in range(4))
    inside = (cols >= left) & (cols < left + width) & (rows >= top) & (rows < top + height)
    per = max(1, NOISE_CHUNK // (c * h * w))
    noise = torch.cat([normal(noise_keys[i : i + per], c * h * w) for i in range(0, b, per)])
    return torch.where(inside, noise.view(b, c, h, w).to(x.dtype), x)


class BatchViews:
    """The views of one kind for a batch of uint8 images ``[B, 3, H, W]`` of size ``image_size``
    (W, H): ``"two"`` (pre-training: normalised patch view + tokenizer view), ``"train"``
    (fine-tuning: crop, flip, jitter, normalise, random erasing with probability ``erasing``) or
    ``"eval"`` (centre crop of ``crop_pct``)."""

    def __init__(self, cfg: TransformConfig, image_size: tuple[int, int], kind: str, erasing: float = 0.0) -> None:
        self.cfg, self.size, self.kind, self.erasing = cfg, image_size, kind, erasing
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(self.mean.to(x.device, non_blocking=True)).div_(self.std.to(x.device, non_blocking=True))

    def __call__(self, images: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        if self.kind == "eval":
            box = center_crop(self.size, cfg.crop_pct)
            boxes = torch.tensor([[box.left, box.top, box.width, box.height]]).expand(len(images), 4)
            return (self.normalize(resized_crops(images, boxes, cfg.input_size, cfg.interpolation)),)
        u = draws.uniform()
        boxes = draw_crops(u[:, CROP:FLIP], self.size, cfg.scale, cfg.ratio)
        flips = u[:, FLIP] < cfg.hflip
        views = [resized_crops(images, boxes, cfg.input_size, cfg.interpolation, flips)]
        if self.kind == "two":
            views.append(resized_crops(images, boxes, cfg.second_input_size, cfg.second_interpolation, flips))
        if cfg.color_jitter > 0:
            apply_jitter(views, *draw_jitter(u[:, JITTER:ERASE], cfg.color_jitter))
        if self.kind == "two":
            return self.normalize(views[0]), TOKENIZER_VIEWS[cfg.tokenizer_view](views[1])
        x = self.normalize(views[0])
        if self.erasing > 0:
            keys = sample_keys(draws.seed, draws.epoch, NOISE_STREAM, draws.indices.to(x.device, non_blocking=True))
            x = erase(x, draw_erasing(u[:, ERASE:], self.erasing, cfg.input_size), keys)
        return (x,)
