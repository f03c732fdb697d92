"""Pictures of semantic segmentation (seed §3.2): an image, its ground truth and the model's
prediction side by side, each label map blended over the image in a fixed class palette.

Pillow only (``canvas``), so the same inputs give the same PNG bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from beit_ds.visualize.canvas import grid, save_png

# CamVid's own colours of the 11 SegNet classes, in label order: sky, building, pole, road,
# pavement, tree, sign-symbol, fence, car, pedestrian, bicyclist
CAMVID_PALETTE = (
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (0, 0, 192),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
)
IGNORE_COLOUR = (0, 0, 0)


def _bit_interleaved(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour of ``index``: its bits spread over the high bits of R, G, B."""
    rgb = [0, 0, 0]
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= ((index >> channel) & 1) << shift
        index >>= 3
    return rgb[0], rgb[1], rgb[2]


def palette(num_classes: int, colours: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """RGB colours ``[C, 3]`` uint8 of ``num_classes`` classes: ``colours`` when given (e.g.
    ``CAMVID_PALETTE``), else the PASCAL VOC palette from its second entry on (distinct, never
    black, which marks ignored pixels; up to 255 classes)."""
    if colours is not None:
        if len(colours) != num_classes:
            raise ValueError(f"{len(colours)} colours for {num_classes} classes")
        return np.asarray(colours, dtype=np.uint8).reshape(num_classes, 3)
    if not 0 < num_classes < 256:
        raise ValueError(f"num_classes={num_classes}: expected 1..255 for the default palette")
    return np.array([_bit_interleaved(k + 1) for k in range(num_classes)], dtype=np.uint8)


def colour_labels(label: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` uint8; ids outside the palette (the ignore
    index 255) are black."""
    label = np.asarray(label).astype(np.int64)
    known = (label >= 0) & (label < len(colours))
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    out[known] = colours[label[known]]
    out[~known] = IGNORE_COLOUR
    return out


def blend(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour(label)``, rounded: uint8 ``[H, W, 3]``."""
    mixed = (1 - alpha) * image.astype(np.float64) + alpha * colour_labels(label, colours)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0


def overlay_figure(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, colours: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Three captioned panels side by side, RGB uint8: ``image [H, W, 3]`` (uint8), the ground
    truth ``label [H, W]`` and the prediction ``pred [H, W]`` blended over it (``blend``; ignored
    pixels black). Layout as ``canvas.grid``: panel ``i`` starts at
    ``x = pad + i * (W + pad)``, ``y = pad + LABEL_HEIGHT``."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] != np.shape(label) or image.shape[:2] != np.shape(pred):
        shapes = f"{image.shape[:2]}, {np.shape(label)}, {np.shape(pred)}"
        raise ValueError(f"image, label and prediction sizes differ: {shapes}")
    panels = [
        ("image", _tensor(image)),
        ("ground truth", _tensor(blend(image, label, colours, alpha))),
        ("prediction", _tensor(blend(image, pred, colours, alpha))),
    ]
    return np.asarray(grid([panels]))


def save_overlays(path: str | Path, panels: Sequence[np.ndarray]) -> Path:
    """Stack overlay figures (``overlay_figure`` outputs, RGB uint8) top to bottom on white and
    write them as one PNG at ``path``; returns the path."""
    if not panels:
        raise ValueError("no overlay figures to save")
    width = max(p.shape[1] for p in panels)
    canvas = Image.new("RGB", (width, sum(p.shape[0] for p in panels)), (255, 255, 255))
    y = 0
    for p in panels:
        canvas.paste(Image.fromarray(np.ascontiguousarray(p, dtype=np.uint8), "RGB"), (0, y))
        y += p.shape[0]
    return save_png(canvas, path)
