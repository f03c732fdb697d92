"""Test-time inference of a segmentation model (seed §3.2, App. B: ADE20K evaluation), as mmseg's
``EncoderDecoder`` does it, for any ``logits_fn`` mapping images ``[B, 3, h, w]`` to logits
``[B, C, h', w']`` at any stride (upsampled here, bilinear, ``align_corners=False``):

* whole: the whole image at once;
* slide: ``crop x crop`` windows every ``stride`` pixels (the last ones shifted back inside the
  image), logits summed and divided by the number of windows covering each pixel;
* ``predict``: multi-scale and flip — the softmax of each scale's (and mirrored) logits at the
  label size, averaged (mmseg's ``aug_test``).

A window (or whole image) is zero-padded at the bottom / right to ``crop`` (whole: to a multiple
of ``pad_to``), so a patch-16 backbone always sees a multiple of its patch; the padding's logits
are cut off again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from beit_ds.config.segmentation import InferenceConfig
from beit_ds.segmentation.layers import resize

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_logits(logits_fn: LogitsFn, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float32 logits ``[B, C, h, w]`` of ``image [B, 3, h, w]`` zero-padded bottom / right to
    ``size`` (each side >= the image's) and the padding's logits cut off."""
    h, w = image.shape[-2:]
    if size[0] < h or size[1] < w:
        raise ValueError(f"pad size {size} is smaller than the image {(h, w)}")
    padded = F.pad(image, (0, size[1] - w, 0, size[0] - h))
    return resize(logits_fn(padded).float(), size)[..., :h, :w]


@torch.no_grad()
def whole_inference(
    logits_fn: LogitsFn, image: torch.Tensor, out_size: tuple[int, int], pad_to: int = 16
) -> torch.Tensor:
    """Logits ``[B, C, *out_size]`` of ``image [B, 3, H, W]`` seen whole (padded to a multiple of
    ``pad_to``), resized to ``out_size`` (the label's size)."""
    h, w = image.shape[-2:]
    logits = padded_logits(logits_fn, image, (_round_up(h, pad_to), _round_up(w, pad_to)))
    return resize(logits, (out_size[0], out_size[1]))


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """First pixel of each window along a side of ``size`` pixels (mmseg's grid:
    ``max(size - crop + stride - 1, 0) // stride + 1`` windows, the last shifted back inside)."""
    if crop < 1 or stride < 1:
        raise ValueError(f"crop={crop}, stride={stride}: expected positive integers")
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(grids)]


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of at most ``crop x crop`` covering a ``height x width`` image."""
    ys, xs = window_starts(height, crop, stride), window_starts(width, crop, stride)
    return [(y, min(y + crop, height), x, min(x + crop, width)) for y in ys for x in xs]


def window_counts(height: int, width: int, crop: int, stride: int) -> torch.Tensor:
    """How many windows cover each pixel ``[height, width]`` (float32, CPU: geometry only, so
    checking it never waits for the device); a stride above ``crop`` leaving gaps is an error."""
    count = torch.zeros(height, width)
    for y1, y2, x1, x2 in slide_windows(height, width, crop, stride):
        count[y1:y2, x1:x2] += 1
    if not bool((count > 0).all()):
        raise ValueError(f"crop={crop}, stride={stride}: windows leave pixels of {height}x{width} uncovered")
    return count


@torch.no_grad()
def slide_inference(
    logits_fn: LogitsFn,
    image: torch.Tensor,
    crop: int,
    stride: int,
    num_classes: int | None,
    out_size: tuple[int, int],
    pad_to: int = 16,
) -> torch.Tensor:
    """Logits ``[B, C, *out_size]`` of ``image [B, 3, H, W]`` averaged over sliding
    ``crop x crop`` windows (each padded to ``crop`` rounded up to ``pad_to``), at the image's
    size, then resized to ``out_size``. ``C`` is ``num_classes`` (other logits are an error) or,
    when None, what ``logits_fn`` gives."""
    b, _, h, w = image.shape
    count = window_counts(h, w, crop, stride).to(image.device)
    side = _round_up(crop, pad_to)
    total = torch.zeros(0)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        logits = padded_logits(logits_fn, image[..., y1:y2, x1:x2], (side, side))
        if num_classes is not None and logits.shape[1] != num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, expected num_classes={num_classes}")
        if not total.numel():  # the first window: as many classes as the logits have
            total = torch.zeros(b, logits.shape[1], h, w, device=image.device)
        total[..., y1:y2, x1:x2] += logits
    return resize(total / count, (out_size[0], out_size[1]))


def rescaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(H, W) x scale`` rounded half up (mmcv's ``rescale_size``)."""
    return int(height * scale + 0.5), int(width * scale + 0.5)


@torch.no_grad()
def predict(
    logits_fn: LogitsFn, image: torch.Tensor, out_size: tuple[int, int], cfg: InferenceConfig, pad_to: int = 16
) -> torch.Tensor:
    """Class probabilities ``[B, C, *out_size]`` of ``image [B, 3, H, W]`` as the ``inference``
    section ``cfg`` says: the mean over ``cfg.scales`` (image resized bilinear by each ratio) and,
    with ``cfg.flip``, the mirrored image, of the softmax of ``cfg.mode`` ("whole" or "slide":
    ``cfg.crop``² windows every ``cfg.stride`` pixels) logits at ``out_size`` (mirrored back).
    ``cfg.crop`` 0 stands for the training crop, which the caller resolves (a slide with crop 0 is
    a ``ValueError``); windows and whole images are padded to multiples of ``pad_to`` (the patch)."""
    if cfg.mode == "slide" and cfg.crop < 1:
        raise ValueError(f"inference.crop={cfg.crop}: expected the window side (0: resolve the training crop first)")

    def probs(x: torch.Tensor) -> torch.Tensor:
        if cfg.mode == "whole":
            logits = whole_inference(logits_fn, x, out_size, pad_to)
        else:
            logits = slide_inference(logits_fn, x, cfg.crop, cfg.stride, None, out_size, pad_to)
        return logits.softmax(dim=1)

    h, w = image.shape[-2:]
    total = torch.zeros(())
    for scale in cfg.scales:
        x = resize(image, rescaled_size(h, w, scale))
        total = total + probs(x)
        if cfg.flip:
            total = total + probs(x.flip(-1)).flip(-1)
    return total / (len(cfg.scales) * (2 if cfg.flip else 1))
