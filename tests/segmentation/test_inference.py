"""Whole / sliding-window / multi-scale + flip inference with per-pixel logit functions, whose
exact answer is known: every window and scale must give back the whole image's logits."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from beit_ds.config import ConfigError
from beit_ds.config.segmentation import InferenceConfig
from beit_ds.segmentation.inference import (
    predict,
    rescaled_size,
    slide_inference,
    slide_windows,
    whole_inference,
    window_counts,
    window_starts,
)

C = 5


def conv1x1() -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(3, C, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(C, 3, 1, 1))
        conv.bias.copy_(torch.randn(C))
    return conv


def test_window_grid_as_mmseg() -> None:
    # 10 px, crop 4, stride 3: max(10 - 4 + 2, 0) // 3 + 1 = 3 windows at 0, 3, 6 (last ends at 10)
    assert window_starts(10, 4, 3) == [0, 3, 6]
    # 11 px: (11 - 4 + 2) // 3 + 1 = 4 windows at 0, 3, 6, and 9 shifted back to 7
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    # smaller than the crop: one window from 0
    assert window_starts(3, 4, 3) == [0]
    assert slide_windows(3, 11, 4, 3)[-1] == (0, 3, 7, 11)


def test_counts_cover_every_pixel() -> None:
    count = window_counts(11, 10, 4, 3)
    assert count.shape == (11, 10) and bool((count > 0).all())
    # rows in windows [0, 4) [3, 7) [6, 10) [7, 11): row 3 in two, 6 in [3, 7) and [6, 10),
    # 7-9 in [6, 10) and [7, 11), 10 in [7, 11) only
    assert count[:, 0].tolist() == [1, 1, 1, 2, 1, 1, 2, 2, 2, 2, 1]
    with pytest.raises(ValueError, match="uncovered"):
        window_counts(10, 10, 3, 5)


@pytest.mark.parametrize("size", [(8, 8), (13, 17), (5, 3), (20, 9), (16, 31)])
def test_slide_equals_whole_for_a_per_pixel_fn(size: tuple[int, int]) -> None:
    fn = conv1x1()
    image = torch.randn(2, 3, *size)
    whole = whole_inference(fn, image, size, pad_to=1)
    slide = slide_inference(fn, image, crop=8, stride=5, num_classes=C, out_size=size, pad_to=4)
    assert whole.shape == slide.shape == (2, C, *size)
    torch.testing.assert_close(slide, fn(image), atol=1e-5, rtol=0)
    torch.testing.assert_close(whole, fn(image), atol=1e-5, rtol=0)


def test_padding_to_the_crop_keeps_the_image_logits() -> None:
    # a window smaller than the crop is padded: the fn sees crop x crop, the output is the image's
    fn, seen = conv1x1(), []
    image = torch.randn(1, 3, 5, 7)

    def logits(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return fn(x)

    out = slide_inference(logits, image, crop=16, stride=10, num_classes=C, out_size=(5, 7))
    assert seen == [(16, 16)]
    torch.testing.assert_close(out, fn(image), atol=1e-5, rtol=0)
    whole_inference(logits, image, (5, 7), pad_to=16)
    assert seen[-1] == (16, 16)


def test_low_resolution_logits_are_upsampled_bilinear() -> None:
    # a constant-per-channel fn at stride 4: upsampling a constant is the constant
    bias = torch.randn(C)
    fn = lambda x: bias.view(1, C, 1, 1).expand(x.shape[0], C, x.shape[2] // 4, x.shape[3] // 4)
    image = torch.randn(1, 3, 12, 20)
    out = slide_inference(fn, image, crop=8, stride=6, num_classes=C, out_size=(24, 40), pad_to=8)
    torch.testing.assert_close(out, bias.view(1, C, 1, 1).expand(1, C, 24, 40))


def test_whole_resizes_to_the_label_size() -> None:
    fn = conv1x1()
    image = torch.randn(1, 3, 8, 12)
    out = whole_inference(fn, image, (16, 24))
    expect = F.interpolate(fn(image), size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_single_scale_predict_is_the_softmax(mode: str) -> None:
    fn = conv1x1()
    image = torch.randn(2, 3, 10, 14)
    probs = predict(fn, image, (10, 14), InferenceConfig(mode=mode, crop=8, stride=4))
    assert probs.shape == (2, C, 10, 14)
    torch.testing.assert_close(probs, fn(image).softmax(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 10, 14))


def test_flip_with_a_flip_equivariant_fn_changes_nothing() -> None:
    fn = conv1x1()  # per pixel, so fn(flip(x)) = flip(fn(x))
    image = torch.randn(1, 3, 9, 13)
    plain = predict(fn, image, (9, 13), InferenceConfig(mode="slide", crop=8, stride=5))
    flipped = predict(fn, image, (9, 13), InferenceConfig(mode="slide", crop=8, stride=5, flip=True))
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=0)


def test_flip_averages_the_mirrored_prediction() -> None:
    # fn depending on the column index is not flip-equivariant: the result is the mean of both
    ramp = lambda x: torch.linspace(0, 3, x.shape[-1]).view(1, 1, 1, -1) * torch.arange(C).view(1, C, 1, 1)
    fn = lambda x: ramp(x).expand(x.shape[0], C, x.shape[2], x.shape[3])
    image = torch.randn(1, 3, 4, 6)
    out = predict(fn, image, (4, 6), InferenceConfig(mode="whole", flip=True), pad_to=1)
    p = fn(image).softmax(1)
    torch.testing.assert_close(out, (p + p.flip(-1)) / 2)


def test_multi_scale_averages_the_softmax_at_the_label_size() -> None:
    fn = conv1x1()
    image = torch.randn(1, 3, 8, 12)
    probs = []
    for s in (0.5, 1.5):
        x = F.interpolate(image, size=rescaled_size(8, 12, s), mode="bilinear", align_corners=False)
        logits = F.interpolate(fn(x), size=(8, 12), mode="bilinear", align_corners=False)
        probs.append(logits.softmax(1))
    out = predict(fn, image, (8, 12), InferenceConfig(mode="whole", scales=(0.5, 1.5)), pad_to=1)
    torch.testing.assert_close(out, (probs[0] + probs[1]) / 2, atol=1e-6, rtol=0)
    assert rescaled_size(8, 12, 1.5) == (12, 18) and rescaled_size(5, 5, 0.5) == (3, 3)


def test_bad_arguments_are_errors() -> None:
    fn, image = conv1x1(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"^inference.mode='tiles': expected one of 'whole', 'slide'"):
        InferenceConfig(mode="tiles")
    with pytest.raises(ValueError, match=r"^inference.crop=0: expected the window side"):
        predict(fn, image, (8, 8), InferenceConfig(mode="slide", crop=0))
    with pytest.raises(ValueError, match="num_classes=7"):
        slide_inference(fn, image, crop=4, stride=4, num_classes=7, out_size=(8, 8))


def test_slide_takes_the_class_count_of_the_logits() -> None:
    fn, image = conv1x1(), torch.randn(1, 3, 9, 13)
    out = slide_inference(fn, image, crop=8, stride=5, num_classes=None, out_size=(9, 13), pad_to=1)
    assert out.shape == (1, C, 9, 13)
    torch.testing.assert_close(out, fn(image), atol=1e-5, rtol=0)


def test_predict_reads_every_key_of_the_inference_section() -> None:
    # a 2x-down per-pixel fn is not scale- or flip-invariant: each key changes the answer
    conv = conv1x1()
    fn = lambda x: conv(x)[..., ::2, ::2]
    image = torch.randn(1, 3, 12, 16)
    base = InferenceConfig(mode="slide", crop=8, stride=4)
    plain = predict(fn, image, (12, 16), base, pad_to=2)
    for change in ({"mode": "whole"}, {"stride": 8}, {"crop": 12}, {"scales": (0.5, 1.0)}, {"flip": True}):
        other = predict(fn, image, (12, 16), replace(base, **change), pad_to=2)
        assert (other - plain).abs().max() > 1e-4, change
    assert predict(fn, image, (12, 16), replace(base, overlays=0), pad_to=2).equal(plain)  # overlays: not inference
