"""Pictures from tensors, with Pillow only: heat maps, overlays, labelled panel grids, PNG files.

Every picture in ``beit_ds.visualize`` is built here, so the attention maps (seed §3.4, Fig. 2)
and the MIM reconstructions (§2.3) look alike and are byte-for-byte reproducible: no fonts beyond
Pillow's built-in one, no timestamps in the PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from beit_ds.safe_write import replacing

# "inferno"-like anchors (dark -> bright), linearly interpolated
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
LABEL_HEIGHT = 12  # pixels of the caption strip above each panel


def colormap(values: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` values in [0, 1] -> RGB ``[3, H, W]`` in [0, 1] (dark = 0, bright = 1)."""
    v = values.detach().float().clamp(0, 1).cpu().numpy() * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (v - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return torch.from_numpy(rgb / 255.0).permute(2, 0, 1).float()


def normalise(values: torch.Tensor) -> torch.Tensor:
    """Min-max scale ``values`` to [0, 1] (a constant map becomes zeros)."""
    v = values.detach().float()
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Patch maps ``[..., h, w]`` -> ``[..., H, W]``, each patch a constant block (nearest)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = torch.nn.functional.interpolate(flat, size=size, mode="nearest")
    return out.reshape(*lead, *size)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """``image [3, H, W]`` in [0, 1] blended with ``colormap(normalise(heat [H, W]))``."""
    return ((1 - alpha) * image.float().cpu() + alpha * colormap(normalise(heat))).clamp(0, 1)


def mask_overlay(image: torch.Tensor, mask: torch.Tensor, dim: float = 0.25) -> torch.Tensor:
    """``image [3, H, W]`` with the pixels outside ``mask [H, W]`` (bool) darkened to ``dim``."""
    keep = mask.cpu().float().unsqueeze(0)
    return image.float().cpu() * (keep + (1 - keep) * dim)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [0, 1] -> an RGB Pillow image (rounded to 8 bits)."""
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def mark(image: torch.Tensor, xy: tuple[float, float], radius: int = 2) -> torch.Tensor:
    """``image [3, H, W]`` with a cyan ring at pixel ``xy = (x, y)`` (a reference point)."""
    pil = to_pil(image)
    x, y = xy
    ImageDraw.Draw(pil).ellipse((x - radius, y - radius, x + radius, y + radius), outline=(0, 255, 255))
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255.0


def grid(rows: Sequence[Sequence[tuple[str, torch.Tensor]]], scale: int = 1, pad: int = 2) -> Image.Image:
    """Panels ``(caption, image [3, H, W])`` laid out row by row on white, each enlarged
    ``scale`` times (nearest) under its caption; rows may differ in length and panel size."""
    cells = [
        [
            (
                label,
                to_pil(img).resize((img.shape[2] * scale, img.shape[1] * scale), Image.Resampling.NEAREST),
            )
            for label, img in row
        ]
        for row in rows
    ]
    widths = [sum(p.width + pad for _, p in row) + pad for row in cells]
    heights = [max(p.height for _, p in row) + LABEL_HEIGHT + pad for row in cells]
    canvas = Image.new("RGB", (max(widths), sum(heights) + pad), (255, 255, 255))
    draw, y = ImageDraw.Draw(canvas), pad
    for row, h in zip(cells, heights):
        x = pad
        for label, panel in row:
            draw.text((x, y), label[: max(1, panel.width // 6)], fill=(0, 0, 0))
            canvas.paste(panel, (x, y + LABEL_HEIGHT))
            x += panel.width + pad
        y += h
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as a PNG without metadata (same pixels -> same bytes); returns the path. A
    link at ``path`` is replaced, never written through (safe_write.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return path


def as_tensor(image: Image.Image) -> torch.Tensor:
    """A Pillow RGB image -> ``[3, H, W]`` in [0, 1] (TensorBoard's ``add_images`` layout)."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
