"""RandAugment and random erasing after the crop: seeded per sample, global RNG untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from beit_ds.config import AugmentConfig


def test_augmented_samples_are_deterministic_and_leave_the_global_rng_alone():
    from PIL import Image

    from beit_ds.config import TransformConfig
    from beit_ds.data.augment import AugmentedTrainTransform
    from beit_ds.data.decode import open_image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    transform = AugmentedTrainTransform(TransformConfig(input_size=32), AugmentConfig(random_erasing=1.0))
    before = torch.get_rng_state()
    a, b, c = (
        transform(open_image(buf.getvalue(), "x.png", 10**6), np.random.default_rng(s)) for s in (5, 5, 6)
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def _encoded(seed: int = 0, size: int = 40):
    from PIL import Image

    from beit_ds.data.decode import open_image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return open_image(buf.getvalue(), "x.png", 10**6)


def test_rand_augment_is_timms_rand_m9_mstd05_inc1_with_its_magnitudes():
    """DeiT / unilm's policy through timm: the same 15 ops, p 0.5, magnitude 9 ± N(0, 0.5) of 10.
    At magnitude 9: rotation 27°, shear 0.27, translation 0.405 of the size, enhancement factors
    1 ± 0.81 — 3× torchvision's RandAugment(2, 9) (9°, 0.09, ± 0.27)."""
    from timm.data.auto_augment import rand_augment_transform

    from beit_ds.config import TransformConfig
    from beit_ds.data.augment import build_rand_augment, timm_hparams, timm_policy

    cfg, augment = TransformConfig(input_size=224), AugmentConfig()
    assert timm_policy(augment) == "rand-m9-n2-mstd0.5-inc1"
    ours = build_rand_augment(cfg, augment).policy
    reference = rand_augment_transform("rand-m9-mstd0.5-inc1", timm_hparams(cfg))
    assert ours.num_layers == reference.num_layers == 2
    assert [op.name for op in ours.ops] == [op.name for op in reference.ops]
    assert len(ours.ops) == 15
    assert {(op.prob, op.magnitude, op.magnitude_std) for op in ours.ops} == {(0.5, 9, 0.5)}
    enhance = ("BrightnessIncreasing", "ContrastIncreasing", "ColorIncreasing", "SharpnessIncreasing")

    def strength(policy) -> dict[str, float]:  # distance of each op's argument from "no change"
        args = {op.name: op.level_fn(op.magnitude, op.hparams)[0] for op in policy.ops if op.level_fn}
        return {n: round(abs(v - 1.0) if n in enhance else abs(v), 6) for n, v in args.items()}

    levels = strength(ours)
    assert levels == strength(reference)
    assert levels["Rotate"] == pytest.approx(27.0)
    assert levels["ShearX"] == pytest.approx(0.27) and levels["ShearY"] == pytest.approx(0.27)
    assert levels["TranslateXRel"] == pytest.approx(0.405)
    for name in enhance:
        assert levels[name] == pytest.approx(0.81), name
    assert ours.ops[0].kwargs["fillcolor"] == (128, 128, 128)  # mean 0.5 in uint8, as timm's create_transform


def test_torchvision_rand_augment_stays_an_option_at_a_third_of_the_strength():
    from torchvision.transforms import RandAugment

    from beit_ds.config import TransformConfig
    from beit_ds.data.augment import build_rand_augment

    tv = build_rand_augment(TransformConfig(input_size=32), AugmentConfig(rand_augment_impl="torchvision"))
    assert isinstance(tv, RandAugment) and tv.magnitude == 9 and tv.num_magnitude_bins == 31
    space = tv._augmentation_space(31, (32, 32))
    assert space["Rotate"][0][9].item() == pytest.approx(9.0)
    assert space["ShearX"][0][9].item() == pytest.approx(0.09)
    assert space["Brightness"][0][9].item() == pytest.approx(0.27)


def test_bad_rand_augment_settings_are_one_line():
    from beit_ds.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"augment.rand_augment_magnitude=11: expected an integer in \[0, 10\]"
    ):
        AugmentConfig(rand_augment_magnitude=11)
    AugmentConfig(rand_augment_magnitude=20, rand_augment_impl="torchvision")
    with pytest.raises(ConfigError, match="augment.rand_augment_impl='pil'"):
        AugmentConfig(rand_augment_impl="pil")


def test_timm_rand_augment_is_seeded_per_sample_for_bit_identical_resume():
    import random

    from beit_ds.config import TransformConfig
    from beit_ds.data.augment import AugmentedTrainTransform

    transform = AugmentedTrainTransform(
        TransformConfig(input_size=32), AugmentConfig(rand_augment_ops=2, random_erasing=0.0)
    )
    enc = _encoded()
    first = [transform(enc, np.random.default_rng([0, 1, i])) for i in range(24)]
    # a "resumed" process: other draws from the global generators in between, samples in reverse
    random.random(), np.random.rand(), torch.rand(1)
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    again = [transform(enc, np.random.default_rng([0, 1, i])) for i in reversed(range(24))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert random.getstate() == states[0]  # global generators untouched
    assert np.array_equal(np.random.get_state()[1], states[1][1])
    assert torch.equal(torch.get_rng_state(), states[2])
    # and it does something: with two ops at p 0.5 about 3 in 4 samples differ from the plain crop
    changed = sum(
        not torch.equal(x, transform.base(enc, np.random.default_rng([0, 1, i]))) for i, x in enumerate(first)
    )
    assert changed >= 12
