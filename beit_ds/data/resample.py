"""Crop + resize + flip of a batch as two batched matrix products (the on-device path's resampler).

Resizing a box of an image to ``S × S`` is separable: output row ``i`` is a weighted sum of input
rows, and likewise for columns. ``axis_weights`` builds, per sample, the ``[S, in]`` matrix of
PIL's resampling: output pixel ``i`` centred at ``start + (i + 0.5) · scale`` in input pixels
(``scale = length / S``), input pixel ``x`` weighted by ``kernel((x + 0.5 - centre) / max(scale, 1))``
(the kernel stretched when reducing: antialiasing), the weights of each output renormalised to sum
to 1 (PIL's rule at the borders). ``resized_crops`` applies ``Wy · image · Wxᵀ`` to every channel;
a horizontal flip reverses the rows of ``Wx``. Works on any device; the images stay uint8 until
the batch is gathered, and the boxes and flips reach the device without waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _triangle(d: torch.Tensor) -> torch.Tensor:
    return (1.0 - d.abs()).clamp_(min=0.0)


def _bicubic(d: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic with ``a = -0.5`` (PIL's and torch's antialiased bicubic); 0 from ``|d| = 2`` on."""
    x = d.abs().clamp_(max=2.0)  # the outer piece is 0 at 2
    near = ((a + 2.0) * x - (a + 3.0)) * (x * x) + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, far)


def _lanczos(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d.abs() < 3.0, torch.sinc(d) * torch.sinc(d / 3.0), torch.zeros_like(d))


KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bilinear": _triangle,
    "bicubic": _bicubic,
    "lanczos": _lanczos,
}


def axis_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, kernel: str) -> torch.Tensor:
    """``[B, out_size, in_size]`` float32 resampling matrices of the spans ``start [B]`` …
    ``start + length [B]`` (input pixels, float) along one axis of ``in_size`` pixels."""
    start, length = start.float(), length.float()
    scale = (length / out_size).unsqueeze(1)  # [B, 1]
    outputs = torch.arange(out_size, dtype=torch.float32, device=start.device) + 0.5
    centre = start.unsqueeze(1) + outputs.unsqueeze(0) * scale  # [B, out]
    inputs = torch.arange(in_size, dtype=torch.float32, device=start.device) + 0.5
    stretch = scale.clamp(min=1.0).unsqueeze(2)  # [B, 1, 1]
    w = KERNELS[kernel]((inputs.view(1, 1, -1) - centre.unsqueeze(2)) / stretch)
    total = w.sum(dim=2, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)


def resized_crops(
    images: torch.Tensor, boxes: torch.Tensor, size: int, kernel: str, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """``images [B, C, H, W]`` (uint8 or float, 0-255) cropped to ``boxes [B, 4]`` (left, top, width,
    height in pixels), resized to ``size²`` with ``kernel`` and flipped where ``flips [B]`` (bool):
    float32 ``[B, C, size, size]`` in [0, 1]."""
    _, _, h, w = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32, non_blocking=True)
    wy = axis_weights(boxes[:, 1], boxes[:, 3], h, size, kernel)  # [B, S, H]
    wx = axis_weights(boxes[:, 0], boxes[:, 2], w, size, kernel)  # [B, S, W]
    if flips is not None:
        wx = torch.where(flips.to(images.device, non_blocking=True).view(-1, 1, 1), wx.flip(1), wx)
    b, c = images.shape[:2]
    x = images.to(torch.float32).reshape(b, c * h, w)
    rows = torch.bmm(x, wx.transpose(1, 2)).clamp_(0.0, 255.0)  # [B, C H, S]: columns first, clipped as PIL does
    rows = rows.view(b, c, h, size).transpose(1, 2).reshape(b, h, c * size)
    out = torch.bmm(wy, rows).view(b, size, c, size).permute(0, 2, 1, 3).contiguous()  # [B, C, S, S]
    return out.div(255.0).clamp_(0.0, 1.0)
