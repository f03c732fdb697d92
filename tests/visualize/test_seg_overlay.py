"""Segmentation overlays: palette, blended class colours at known pixels, the PNG round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beit_ds.visualize.canvas import LABEL_HEIGHT
from beit_ds.visualize.segmentation import CAMVID_PALETTE, overlay_figure, palette, save_overlays

PAD = 2  # canvas.grid's default gap


def test_default_palette_is_distinct_and_never_black() -> None:
    p = palette(150)
    assert p.shape == (150, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 150
    assert not (p == 0).all(axis=1).any()
    # PASCAL VOC entries 1, 2, 3: bit 0 of the index -> R's top bit, bit 1 -> G, bit 2 -> B
    assert p[:3].tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0]]


def test_explicit_palette() -> None:
    p = palette(11, CAMVID_PALETTE)
    assert p.shape == (11, 3) and p[3].tolist() == [128, 64, 128]  # road
    with pytest.raises(ValueError, match="11 colours for 12 classes"):
        palette(12, CAMVID_PALETTE)


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((4, 6, 3), 100, dtype=np.uint8)
    label = np.zeros((4, 6), dtype=np.int64)
    label[1, 2], label[3, 5] = 3, 255
    pred = np.full((4, 6), 3, dtype=np.int64)
    return image, label, pred


def _panel(fig: np.ndarray, i: int, w: int = 6) -> np.ndarray:
    x, y = PAD + i * (w + PAD), PAD + LABEL_HEIGHT
    return fig[y : y + 4, x : x + w]


def test_overlay_blends_the_class_colour() -> None:
    image, label, pred = _example()
    colours = palette(11, CAMVID_PALETTE)
    fig = overlay_figure(image, label, pred, colours, alpha=0.25)
    assert fig.dtype == np.uint8
    assert fig.shape == (PAD + LABEL_HEIGHT + 4 + PAD, 3 * (6 + PAD) + PAD, 3)
    assert (_panel(fig, 0) == 100).all()
    gt, pr = _panel(fig, 1), _panel(fig, 2)
    # class 3 (road, 128 64 128): 0.75 * 100 + 0.25 * (128, 64, 128) = (107, 91, 107)
    assert gt[1, 2].tolist() == [107, 91, 107] and (pr == [107, 91, 107]).all()
    # class 0 (sky, 128 128 128): 75 + 32 = 107 in every channel
    assert gt[0, 0].tolist() == [107, 107, 107]
    # ignored: blended with black, 0.75 * 100 = 75
    assert gt[3, 5].tolist() == [75, 75, 75]


def test_sizes_must_agree() -> None:
    image, label, pred = _example()
    with pytest.raises(ValueError, match="sizes differ"):
        overlay_figure(image, label[:2], pred, palette(4))


def test_png_round_trips(tmp_path: Path) -> None:
    image, label, pred = _example()
    a = overlay_figure(image, label, pred, palette(4))
    b = overlay_figure(np.zeros((8, 10, 3), np.uint8), np.ones((8, 10)), np.ones((8, 10)), palette(4))
    path = save_overlays(tmp_path / "sub" / "overlays.png", [a, b])
    with Image.open(path) as png:
        back = np.asarray(png.convert("RGB"))
    assert back.shape == (a.shape[0] + b.shape[0], b.shape[1], 3)
    assert (back[: a.shape[0], : a.shape[1]] == a).all() and (back[a.shape[0] :] == b).all()
    assert (back[: a.shape[0], a.shape[1] :] == 255).all()  # white beside the narrower row


def test_a_planted_overlay_link_is_replaced_not_written_through(tmp_path: Path, victim: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.png").symlink_to(victim)
    image, label, pred = _example()
    path = save_overlays(run / "eval.png", [overlay_figure(image, label, pred, palette(4))])
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and Image.open(path).format == "PNG"
    assert sorted(p.name for p in run.iterdir()) == ["eval.png"]
