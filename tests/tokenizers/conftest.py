"""Real photographs for tokenizer tests: skimage's CC0 demo images (the product's demo data)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


@functools.cache
def _photo(name: str) -> torch.Tensor:
    """``[1, 3, H, W]`` in [0, 1]."""
    array = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="session")
def photos() -> Callable[[int, int], torch.Tensor]:
    """``photos(n, size)``: centre squares of the first ``n`` photos, ``[n, 3, size, size]`` in [0, 1]."""

    def make(n: int, size: int) -> torch.Tensor:
        out = []
        for name in PHOTOS[:n]:
            x = _photo(name)
            side = min(x.shape[-2:])
            top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
            square = x[..., top : top + side, left : left + side]
            out.append(F.interpolate(square, size=(size, size), mode="bilinear", antialias=True))
        return torch.cat(out).clamp(0, 1)

    return make


def random_photo_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random square crops (¼ to all of the shorter side) of the photos, resized to
    ``[n, 3, size, size]`` in [0, 1], drawn from an explicit generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = _photo(PHOTOS[int(torch.randint(len(PHOTOS), (1,), generator=gen))])
        h, w = x.shape[-2:]
        side = int(min(h, w) * (0.25 + 0.75 * float(torch.rand(1, generator=gen))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = x[..., top : top + side, left : left + side]
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(out).clamp(0, 1)


@pytest.fixture(scope="session")
def photo_crops() -> Callable[[int, int, int], torch.Tensor]:
    """``photo_crops(n, size, seed)``: see ``random_photo_crops``."""
    return random_photo_crops
