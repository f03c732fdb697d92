"""Batched views of the on-device path: the resampler agrees with PIL, and crop, flip, jitter and
erasing draws have the distributions of the PIL path's (torchvision's) draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from beit_ds.data.batch_views import (
    CROP,
    ERASE,
    FLIP,
    JITTER,
    Draws,
    apply_jitter,
    draw_crops,
    draw_erasing,
    draw_jitter,
    erase,
)
from beit_ds.data.counter_rng import sample_keys
from beit_ds.data.resample import resized_crops
from beit_ds.data.transforms import Jitter, random_resized_crop
from beit_ds.data.transforms import apply_jitter as apply_jitter_one

DRAWS = 20_000


@pytest.fixture(scope="module")
def u() -> torch.Tensor:
    """``[DRAWS, ...]`` view parameter uniforms of samples 0 … DRAWS - 1 (seed 3, epoch 1)."""
    return Draws(3, 1, torch.arange(DRAWS)).uniform()


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos"])
def test_crops_agree_with_pil_resize_within_a_level(photos, kernel):
    image = Image.fromarray(photos[0])
    x = torch.from_numpy(photos[0].copy()).permute(2, 0, 1).unsqueeze(0)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "lanczos": Image.Resampling.LANCZOS}[kernel]
    for (left, top, w, h), size, flip in [((0, 0, *image.size), 32, False), ((10, 5, 40, 30), 32, True),
                                           ((10, 5, 20, 17), 48, False), ((3, 4, 50, 50), 16, True)]:
        ref = np.asarray(image.resize((size, size), resample, box=(left, top, left + w, top + h)), dtype=np.float64)
        out = resized_crops(x, torch.tensor([[left, top, w, h]]), size, kernel, torch.tensor([flip]))
        ours = out[0].permute(1, 2, 0).numpy() * 255
        diff = np.abs((ours[:, ::-1] if flip else ours) - ref)
        assert diff.max() <= 1.2 and diff.mean() <= 0.35  # PIL rounds to 8 bits between its passes


def test_crop_and_flip_draws_match_the_pil_paths(u):
    size, scale, ratio = (40, 30), (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = draw_crops(u[:, CROP:FLIP], size, scale, ratio)
    left, top, w, h = boxes.unbind(1)
    assert bool((left >= 0).all() and (top >= 0).all() and (left + w <= 40).all() and (top + h <= 30).all())
    rng = np.random.default_rng(0)
    ref = np.array([[c.width, c.height] for c in (random_resized_crop(size, scale, ratio, rng) for _ in range(DRAWS))])
    area, ref_area = (w * h / 1200).numpy(), ref.prod(1) / 1200
    aspect, ref_aspect = torch.log(w / h).numpy(), np.log(ref[:, 0] / ref[:, 1])
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0
    assert abs(area.mean() - ref_area.mean()) < 0.01 and abs(area.std() - ref_area.std()) < 0.01
    assert abs(aspect.mean() - ref_aspect.mean()) < 0.01 and abs(aspect.std() - ref_aspect.std()) < 0.01
    assert abs(aspect).max() <= math.log(4 / 3) + 0.1  # rounding to whole pixels
    assert (u[:, FLIP] < 0.5).double().mean().item() == pytest.approx(0.5, abs=0.01)


def test_batched_jitter_is_the_per_sample_jitter(u, photos):
    factors, order = draw_jitter(u[:8, JITTER:ERASE], 0.4)
    assert bool((factors >= 0.6).all() and (factors <= 1.4).all())
    assert sorted(map(tuple, order.tolist())) != [(0, 1, 2)] * 8  # several orders
    patch = torch.from_numpy(np.stack([p[:32, :32] for p in photos[:2]] * 4)).permute(0, 3, 1, 2).float() / 255
    views = [patch.clone(), patch[:, :, ::2, ::2].clone()]
    apply_jitter(views, factors, order)
    for i in range(8):
        jitter = Jitter(*factors[i].tolist(), tuple(order[i].tolist()))
        one = [patch[i].clone(), patch[i, :, ::2, ::2].clone()]
        apply_jitter_one(one, jitter)
        assert torch.allclose(views[0][i], one[0], atol=1e-5) and torch.allclose(views[1][i], one[1], atol=1e-5)


def test_erasing_rate_boxes_and_noise(u):
    boxes = draw_erasing(u[:, ERASE:], 0.25, 32)
    erased = boxes[:, 2] * boxes[:, 3] > 0
    assert erased.double().mean().item() == pytest.approx(0.25, abs=0.015)
    area = (boxes[erased, 2] * boxes[erased, 3] / 1024).numpy()
    assert area.min() >= 0.015 and area.max() <= 0.35 and area.mean() == pytest.approx(0.175, abs=0.02)
    x = torch.zeros(256, 3, 32, 32)
    out = erase(x, torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(256, 4), sample_keys(0, 0, 1, torch.arange(256)))
    assert out.mean().item() == pytest.approx(0.0, abs=0.01) and out.std().item() == pytest.approx(1.0, abs=0.01)
    half = erase(x[:4], torch.tensor([[8.0, 0.0, 8.0, 32.0]]).expand(4, 4), sample_keys(0, 0, 1, torch.arange(4)))
    assert bool((half[..., 8:16] != 0).all()) and bool((half[..., :8] == 0).all() and (half[..., 16:] == 0).all())
