"""RandAugment and random erasing after the crop: seeded per sample, global RNG untouched."""

from __future__ import annotations

import io

import numpy as np
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
