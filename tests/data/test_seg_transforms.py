"""Joint segmentation transforms: label mapping, keep-ratio sizes, crop + pad, cat_max_ratio,
image/label alignment through resize/crop/flip, photometric distortion, determinism."""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
import pytest
import torch

from beit_ds.config import SegTransformConfig
from beit_ds.data import seg_transforms as T
from beit_ds.data.skips import DataError

# photometric off and identity normalisation: the output image is the resized pixels / 255
PLAIN = SegTransformConfig(crop_size=48, scale=(96, 48), photometric=False, mean=(0, 0, 0), std=(1, 1, 1))
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]]
)


def _blocks(h: int, w: int, block: int, seed: int = 0) -> np.ndarray:
    """int32 [h, w] label of ``block``² squares of random classes 0..5."""
    grid = np.random.default_rng(seed).integers(0, 6, size=(h // block + 1, w // block + 1))
    return np.kron(grid, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.int32)


def test_label_map_reduce_zero_label_and_ignore_index():
    ade = T.LabelMap(num_classes=150, reduce_zero_label=True)
    raw = np.array([[0, 1, 2], [150, 255, 7]], dtype=np.uint8)
    assert ade(raw, "a.png").tolist() == [[255, 0, 1], [149, 255, 6]]
    camvid = T.LabelMap(num_classes=11, ignore_index=11)
    assert camvid(np.array([[0, 10, 11]], dtype=np.uint8), "c.png").tolist() == [[0, 10, 255]]
    assert T.LabelMap(3)(np.array([[2, 255]], dtype=np.int32), "d.png").tolist() == [[2, 255]]
    with pytest.raises(
        DataError, match=r"^c.png: label value 12 outside classes 0..10, void 11 \(num_classes=11"
    ):
        camvid(np.array([[0, 12]], dtype=np.uint8), "c.png")
    with pytest.raises(DataError, match=r"^a.png: label value 151 outside classes 1..150, void 255 or 0 "):
        ade(np.array([[151]], dtype=np.uint8), "a.png")
    with pytest.raises(DataError, match=r"^d.png: label value 255 outside classes 0..10, void 11"):
        camvid(np.array([[255]], dtype=np.uint8), "d.png")  # 255 is no void unless the files say so


def test_negative_label_values_are_a_one_line_error():
    # a 32-bit label map (mode "I") may hold -1: named, never passed on to bincount and the loss
    with pytest.raises(DataError) as err:
        T.LabelMap(6)(np.array([[0, 5], [-1, 255]], dtype=np.int32), "n.tif")
    assert str(err.value) == "n.tif: label value -1 outside classes 0..5, void 255 (num_classes=6, reduce_zero_label=False)"
    with pytest.raises(DataError, match=r"^a.tif: label value -7 outside classes 1..150, void 255 or 0 "):
        T.LabelMap(150, reduce_zero_label=True)(np.array([[3, -7]], dtype=np.int32), "a.tif")


def test_keep_ratio_sizes_and_random_scale():
    assert T.keep_ratio_size((683, 512), (2048, 512)) == (683, 512)  # ADE20K: unchanged
    assert T.keep_ratio_size((480, 360), (2048, 512)) == (683, 512)  # CamVid: short side 512
    assert T.keep_ratio_size((2000, 100), (2048, 512)) == (2048, 102)  # long side bounds
    assert T.keep_ratio_size((480, 360), (512, 2048)) == (683, 512)  # (long, short) in any order
    rng = np.random.default_rng(0)
    draws = [T.random_scale((2048, 512), (0.5, 2.0), rng) for _ in range(200)]
    assert all(1024 <= a <= 4096 and 256 <= b <= 1024 and a == 4 * b or abs(a - 4 * b) < 4 for a, b in draws)
    assert min(b for _, b in draws) < 300 and max(b for _, b in draws) > 980


def test_resize_label_nearest_with_half_pixel_centres():
    label = np.arange(4, dtype=np.int32).reshape(1, 4)
    assert T.resize_label(label, (8, 2)).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * 2
    assert T.resize_label(np.arange(8, dtype=np.int32).reshape(1, 8), (4, 1)).tolist() == [[1, 3, 5, 7]]


def test_crop_and_pad_sizes():
    small, label = np.full((20, 30, 3), 255, dtype=np.uint8), np.ones((20, 30), dtype=np.int32)
    cfg = dataclasses.replace(PLAIN, scale=(30, 20), ratio_range=(1.0, 1.0), hflip=0.0)
    image, labels = T.SegTrainTransform(cfg)(small, label, np.random.default_rng(0))
    assert image.shape == (3, 48, 48) and labels.shape == (48, 48) and labels.dtype == torch.int64
    assert (
        torch.all(image[:, :20, :30] == 1)
        and torch.all(image[:, 20:] == 0)
        and torch.all(image[:, :, 30:] == 0)
    )
    assert (
        torch.all(labels[:20, :30] == 1)
        and torch.all(labels[20:] == 255)
        and torch.all(labels[:, 30:] == 255)
    )
    big = np.zeros((120, 200, 3), dtype=np.uint8)
    image, labels = T.SegTrainTransform(PLAIN)(big, _blocks(120, 200, 10), np.random.default_rng(1))
    assert image.shape == (3, 48, 48) and labels.shape == (48, 48) and int((labels == 255).sum()) == 0


def test_cat_max_ratio_retries_dominated_crops():
    # 20 x 100: columns 0..49 alternate classes 0 / 1, columns 50..99 are class 2 only
    label = np.zeros((20, 100), dtype=np.int32)
    label[:, 1:50:2] = 1
    label[:, 50:] = 2

    def worst(cat_max_ratio: float, seed: int) -> float:
        top, left = T.crop_origin(label, 20, cat_max_ratio, np.random.default_rng(seed))
        counts = np.bincount(label[top : top + 20, left : left + 20].ravel(), minlength=3)
        return counts.max() / counts.sum()

    assert max(worst(0.75, seed) for seed in range(60)) < 0.75
    assert sum(worst(1.0, seed) >= 0.75 for seed in range(60)) > 15  # without the retry: ~44 % dominated


def test_image_and_label_stay_aligned_through_resize_crop_flip():
    label = _blocks(90, 120, 24, seed=3)
    image = PALETTE[label].astype(np.uint8)
    transform = T.SegTrainTransform(PLAIN)
    for seed in range(6):
        pixels, labels = transform(image, label, np.random.default_rng(seed))
        rgb = (pixels.permute(1, 2, 0).numpy() * 255).round()
        nearest = np.abs(rgb[:, :, None, :] - PALETTE[None, None]).sum(-1).argmin(-1)
        lab = labels.numpy()
        padded = np.pad(lab, 1, mode="edge")
        shifts = [
            padded[1 + dy : 1 + dy + lab.shape[0], 1 + dx : 1 + dx + lab.shape[1]]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        interior = (lab != 255) & np.all([s == lab for s in shifts], axis=0)  # 3 x 3 of one class
        assert interior.sum() > 0.3 * interior.size
        assert (nearest[interior] == lab[interior]).mean() > 0.99  # bilinear mixes colours at edges only
        assert (nearest[interior] == lab[:, ::-1][interior]).mean() < 0.95  # a misalignment shows
    flipped = dataclasses.replace(PLAIN, hflip=1.0)
    kept = dataclasses.replace(PLAIN, hflip=0.0)
    a = T.SegTrainTransform(flipped)(image, label, np.random.default_rng(7))
    b = T.SegTrainTransform(kept)(image, label, np.random.default_rng(7))
    c = PLAIN.crop_size
    assert torch.equal(a[1], b[1].flip(-1)) or torch.equal(a[1][:, :c], b[1][:, :c].flip(-1))
    assert torch.equal(a[0], b[0].flip(-1))


def test_hsv_matches_colorsys_and_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    hsv = T.rgb_to_hsv(rgb).reshape(-1, 3).astype(float)
    ref = np.array([colorsys.rgb_to_hsv(*(p / 255)) for p in rgb.reshape(-1, 3).astype(float)])
    hue_err = np.abs((ref[:, 0] * 180 - hsv[:, 0] + 90) % 180 - 90)
    assert hue_err.max() <= 0.5 + 1e-6 and np.abs(ref[:, 1] * 255 - hsv[:, 1]).max() <= 0.5 + 1e-6
    assert np.array_equal(ref[:, 2] * 255, hsv[:, 2])
    back = T.hsv_to_rgb(T.rgb_to_hsv(rgb)).astype(int)
    assert np.abs(back - rgb).max() <= 4 and np.abs(back - rgb).mean() < 0.5  # 8-bit quantisation only


def test_photometric_distortion_keeps_grey_grey_and_changes_colour():
    grey = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(8, 0)
    mid = np.array(
        [[130, 100, 90], [90, 130, 100], [100, 90, 130], [140, 120, 95], [95, 140, 120], [120, 95, 140]]
    )
    colour = mid[_blocks(8, 64, 4)].astype(np.uint8)  # brightness and contrast never clip these
    hue0 = T.rgb_to_hsv(colour)[..., 0].astype(int)
    kept_grey = hue_shifted = 0
    for seed in range(100):
        out = T.photometric_distortion(grey, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == grey.shape
        assert np.abs(np.diff(out.astype(int), axis=-1)).max() == 0  # no hue, no saturation in grey
        assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # brightness and contrast are monotonic
        kept_grey += np.array_equal(out, grey)
        hue = T.rgb_to_hsv(T.photometric_distortion(colour, np.random.default_rng(seed)))[..., 0].astype(int)
        hue_shifted += abs(((hue - hue0 + 90) % 180 - 90).mean()) > 2
    assert 15 <= kept_grey <= 35  # neither brightness nor contrast drawn: 1/4
    assert 20 <= hue_shifted <= 60  # hue drawn (1/2) with |delta| > 2 (31 of 36 values): 0.43


def test_same_seed_same_sample_and_the_eval_transform():
    label = _blocks(90, 120, 15)
    image = PALETTE[label].astype(np.uint8)
    transform = T.SegTrainTransform(dataclasses.replace(PLAIN, photometric=True))
    a, b = (transform(image, label, np.random.default_rng([1, 2, 3])) for _ in range(2))
    c = transform(image, label, np.random.default_rng([1, 2, 4]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    cfg = SegTransformConfig(eval_scale=(160, 40))
    pixels, labels = T.SegEvalTransform(cfg)(image, label, np.random.default_rng(0))
    assert (
        pixels.shape == (3, 40, 53)
        and labels.shape == (90, 120)
        and torch.equal(labels, torch.from_numpy(label).long())
    )
    expected = (torch.tensor(PALETTE[label[0, 0]] / 255) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    assert torch.allclose(pixels[:, 0, 0].double(), expected, atol=1e-5)
