"""Resizing position tables to another patch grid (seed §3.1 "higher resolution", App. B).

Used both when converting a checkpoint to another resolution (``convert.adapt_positions``) and at
run time, when a backbone sees an input whose patch grid differs from the one it was built for
(``Beit.forward_features`` on a 512² segmentation crop, a 96² DINO local crop): the same
functions, so a model run at a new size equals one built at that size from converted weights.
The interpolation matrices are cached per (source, target, device); nothing here is a parameter
or enters a state dict.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _square_side(n: int, what: str) -> int:
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"{what}: {n} positions do not form a square grid")
    return side


def _resize(image: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bicubic resize of ``[C, h, w]`` (computed in fp32) to ``[C, *size]``."""
    out = F.interpolate(image[None].float(), size=size, mode="bicubic", align_corners=align_corners)
    return out[0].to(image.dtype)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Absolute position embeddings ``[1, 1 + h·h, D]`` -> ``[1, 1 + H·W, D]`` for ``grid`` (H, W):
    [CLS] kept; the patch embeddings, a ``D``-channel h×h image, resized bicubically with
    ``align_corners=False`` (each embedding sits at its patch's centre, as the patches do)."""
    side = _square_side(pos_embed.shape[1] - 1, "pos_embed")
    if (side, side) == tuple(grid):
        return pos_embed
    image = pos_embed[0, 1:].reshape(side, side, -1).permute(2, 0, 1)
    patches = _resize(image, grid, align_corners=False).permute(1, 2, 0).reshape(1, grid[0] * grid[1], -1)
    return torch.cat((pos_embed[:, :1], patches), dim=1)


REL_POS_RESIZE = ("geometric", "bicubic")
"""Methods of ``resize_rel_pos_table`` (``model.rel_pos_resize``)."""


def _geometric_positions(src_half: int, dst_half: int) -> torch.Tensor:
    """Where the source offsets ``-src_half..src_half`` sit on the new offset axis: ``0, ±1,
    ±(1 + q), ±(1 + q + q²), …`` with the ratio ``q`` (bisection in [1.01, 1.5], as unilm's
    ``run_class_finetuning.py``) making the largest land at about ``dst_half``."""
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if (1.0 - q**src_half) / (1.0 - q) > dst_half:
            hi = q
        else:
            lo = q
    steps = torch.tensor([q**i for i in range(src_half)], dtype=torch.float64)
    right = torch.cumsum(steps, 0)  # 1, 1 + q, 1 + q + q², …
    return torch.cat((-right.flip(0), torch.zeros(1, dtype=torch.float64), right))


def _linear_weights(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[len(targets), len(points)]`` piecewise-linear interpolation matrix over the increasing
    ``points``; targets outside them take the nearest end value (timm's RegularGridInterpolator)."""
    right = torch.searchsorted(points, targets).clamp(1, len(points) - 1)
    left = right - 1
    frac = ((targets - points[left]) / (points[right] - points[left])).clamp(0.0, 1.0)
    weights = torch.zeros(len(targets), len(points), dtype=torch.float64)
    rows = torch.arange(len(targets))
    weights[rows, left] = 1.0 - frac
    weights[rows, right] += frac
    return weights


def _geometric_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[C, 2h-1, 2w-1] -> [C, *size]`` offset images on unilm's geometric grid, bilinear between
    its samples (the interpolation timm uses without SciPy), computed in fp64."""
    wy, wx = (_axis_weights(s, d, image.device) for s, d in zip(image.shape[1:], size, strict=True))
    return (wy @ image.double() @ wx.T).to(image.dtype)


@functools.lru_cache(maxsize=64)
def _axis_weights(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """``[dst, src]`` fp64 interpolation matrix from ``src`` offsets (odd, ``2h-1``) to ``dst``
    on ``device``; cached, and made outside inference mode so autograd may save it."""
    with torch.inference_mode(False), torch.no_grad():
        targets = torch.arange(-(dst // 2), dst // 2 + 1, dtype=torch.float64)
        return _linear_weights(_geometric_positions(src // 2, dst // 2), targets).to(device)


def resize_rel_pos_table(
    table: torch.Tensor, grid: tuple[int, int], method: str = "geometric"
) -> torch.Tensor:
    """A relative position bias table ``[(2h-1)² + 3, heads]`` for ``grid`` (H, W).

    Each head's (2h-1)×(2h-1) image of (dy, dx) offsets becomes a (2H-1)×(2W-1) one; the 3 [CLS]
    rows (cls→patch, patch→cls, cls→cls) are copied. ``"geometric"`` (default; unilm's
    ``run_class_finetuning.py`` and timm's ``resize_rel_pos_bias_table``): the old offsets are
    placed on a geometric progression (0, 1, 1 + q, …) spanning the new range and the new integer
    offsets interpolated linearly between them, so offsets 0 and ±1 keep their trained bias
    exactly and only far offsets are stretched. unilm interpolated with SciPy's ``interp2d``
    (cubic, removed from SciPy); this is timm's SciPy-free linear variant, in pure torch.
    ``"bicubic"``: every offset stretched by (H-1)/(h-1) with ``F.interpolate`` (``align_corners``),
    which blurs a sharply local head (its ±1 neighbours take values from between old offsets).
    """
    side = (_square_side(table.shape[0] - 3, "relative_position_bias_table") + 1) // 2
    new = (2 * grid[0] - 1, 2 * grid[1] - 1)
    if (2 * side - 1, 2 * side - 1) == new:
        return table
    if method not in REL_POS_RESIZE:
        raise ValueError(f"rel_pos_resize={method!r}: expected one of {', '.join(REL_POS_RESIZE)}")
    image = table[:-3].reshape(2 * side - 1, 2 * side - 1, -1).permute(2, 0, 1)
    if method == "geometric":
        image = _geometric_resize(image, new)
    else:
        image = _resize(image, new, align_corners=True)
    rel = image.permute(1, 2, 0).reshape(new[0] * new[1], -1)
    return torch.cat((rel, table[-3:]), dim=0)
