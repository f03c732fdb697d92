"""Two-view transform: crop statistics, filters against PIL, jitter against torchvision, determinism."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from beit_ds.config import TransformConfig
from beit_ds.data.decode import open_image
from beit_ds.data.demo import demo_folder
from beit_ds.data.transforms import (
    CropBox,
    EvalTransform,
    Jitter,
    Region,
    TrainTransform,
    TwoViewTransform,
    apply_jitter,
    center_crop,
    lanczos_half,
    map_pixels,
    random_resized_crop,
)

LIMIT = 89_478_485


def _photo_bytes(name: str = "chelsea.png") -> bytes:
    return (demo_folder() / name).read_bytes()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def test_random_resized_crop_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = [random_resized_crop((500, 375), (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(2000)]
    for b in boxes:
        assert 0 <= b.left and b.left + b.width <= 500 and 0 <= b.top and b.top + b.height <= 375
    areas = np.array([b.width * b.height / (500 * 375) for b in boxes])
    aspects = np.array([b.width / b.height for b in boxes])
    assert areas.min() >= 0.075 and areas.max() <= 1.0
    assert 0.70 < aspects.min() and aspects.max() < 1.43
    assert abs(np.median(areas) - 0.5) < 0.1  # uniform area fraction, lightly truncated at the top
    assert random_resized_crop((10, 200), (0.9, 1.0), (3 / 4, 4 / 3), rng) == CropBox(
        0, 93, 10, 13
    )  # fallback


def test_center_crop_is_the_eval_crop():
    assert center_crop((500, 400), 0.875) == CropBox(75, 25, 350, 350)


def test_lanczos_half_matches_pil():
    image = Image.open(io.BytesIO(_photo_bytes())).convert("RGB").resize((64, 48), Image.Resampling.BICUBIC)
    ref = np.asarray(image.resize((32, 24), Image.Resampling.LANCZOS)).astype(np.float64)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    ours = lanczos_half(x).permute(1, 2, 0).numpy() * 255
    assert np.abs(ours - ref).max() <= 1.1  # PIL rounds to 8 bits between its two passes
    assert np.abs(ours - ref).mean() < 0.5


@pytest.mark.parametrize("fast", [False, True])
def test_views_match_the_pil_reference_for_the_same_crop(fast):
    data = _photo_bytes("hubble_deep_field.jpg")  # 1000 × 872 JPEG: fast decoding uses 1/4 scale here
    crop = CropBox(100, 50, 600, 500)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    box = (100, 50, 700, 550)
    ref_patch = np.asarray(full.resize((64, 64), Image.Resampling.BICUBIC, box=box))
    ref_token = np.asarray(full.resize((32, 32), Image.Resampling.LANCZOS, box=box))
    views = TwoViewTransform(TransformConfig(input_size=64, second_input_size=32, fast_decode=fast))
    patch, token = views.make(open_image(data, "hubble", LIMIT), crop, True, False, None)
    as_u8 = lambda v: (v * 255).round().byte().permute(1, 2, 0).numpy()
    region = Region(open_image(data, "hubble", LIMIT), crop, 64, fast)
    assert region.image.size == ((250, 218) if fast else (1000, 872))
    assert _psnr(as_u8(patch), ref_patch) > (33 if fast else 45)
    assert _psnr(as_u8(token), ref_token) > (35 if fast else 45)


def test_jitter_matches_torchvision_in_the_same_order():
    x = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0))
    ours = [x.clone()]
    apply_jitter(ours, Jitter(brightness=1.3, contrast=0.7, saturation=1.2, order=(1, 0, 2)))
    ref = TF.adjust_contrast(x, 0.7)  # torchvision's grey: 0.2989 / 0.587 / 0.114
    ref = TF.adjust_saturation(TF.adjust_brightness(ref, 1.3), 1.2)
    assert torch.allclose(ours[0], ref, atol=2e-3)


def _views(cfg: TransformConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = open_image(_photo_bytes(), "chelsea", LIMIT)
    return TwoViewTransform(cfg)(enc, np.random.default_rng(seed))


def test_two_views_shapes_ranges_and_determinism():
    cfg = TransformConfig(input_size=32, second_input_size=16)
    patch, token = _views(cfg, 3)
    assert patch.shape == (3, 32, 32) and token.shape == (3, 16, 16)
    assert patch.min() >= -1 and patch.max() <= 1  # mean = std = 0.5
    assert token.min() >= 0.1 - 1e-6 and token.max() <= 0.9 + 1e-6  # map_pixels
    again = _views(cfg, 3)
    assert torch.equal(patch, again[0]) and torch.equal(token, again[1])
    assert not torch.equal(patch, _views(cfg, 4)[0])
    raw = TransformConfig(input_size=32, second_input_size=16, tokenizer_view="raw")
    assert torch.allclose(map_pixels(_views(raw, 3)[1]), token)


def test_flip_and_jitter_are_shared_by_both_views():
    base = dict(input_size=32, second_input_size=16, color_jitter=0.0)
    plain = _views(TransformConfig(**base, hflip=0.0), 5)
    flipped = _views(TransformConfig(**base, hflip=1.0), 5)
    assert torch.allclose(flipped[0], plain[0].flip(-1)) and torch.allclose(flipped[1], plain[1].flip(-1))
    jittered = _views(TransformConfig(input_size=32, second_input_size=16, hflip=0.0), 5)
    # Same crop (drawn before the jitter); the jitter is applied to both views alike, so the token
    # view is still the Lanczos half of the patch view, up to clipping.
    unit_patch = jittered[0] * 0.5 + 0.5
    assert not torch.allclose(jittered[0], plain[0])
    assert (lanczos_half(unit_patch) - (jittered[1] - 0.1) / 0.8).abs().mean() < 0.02


def test_finetune_transforms():
    cfg = TransformConfig(input_size=48)
    enc = open_image(_photo_bytes(), "chelsea", LIMIT)
    train = TrainTransform(cfg)(enc, np.random.default_rng(0))
    assert train.shape == (3, 48, 48)
    first = EvalTransform(cfg)(open_image(_photo_bytes(), "chelsea", LIMIT))
    second = EvalTransform(cfg)(open_image(_photo_bytes(), "chelsea", LIMIT))
    assert torch.equal(first, second)  # evaluation is deterministic
    full = Image.open(io.BytesIO(_photo_bytes())).convert("RGB")  # 451 × 300: centre 262 px square
    ref = np.asarray(full.resize((48, 48), Image.Resampling.BICUBIC, box=(94, 19, 356, 281)))
    assert _psnr(((first * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy(), ref) > 45
