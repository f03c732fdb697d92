"""Fine-tuning augmentation after the crop (seed App. H, following DeiT): RandAugment on the
uint8 view, normalisation, then random erasing with per-pixel noise.

RandAugment is timm's (``timm.data.auto_augment``), the implementation DeiT and unilm ran:
``rand-m9-mstd0.5-inc1`` by default, i.e. 2 of timm's 15 "increasing" operations, each applied
with probability 0.5 at magnitude 9 of 10 jittered by a normal of std 0.5 (rotation up to 27°,
shear 0.27, brightness/contrast/colour/sharpness factors 1 ± 0.81), bicubic resampling, the
normalisation mean as fill. ``augment.rand_augment_impl: torchvision`` keeps torchvision's
``RandAugment`` (magnitude 9 of 30: rotation 9°, shear 0.09, brightness ± 0.27). Random erasing
is torchvision's (one rectangle of 2-33 % of the area, normal noise).

timm draws from Python's ``random`` and NumPy's global generator, torchvision from torch's. Each
sample runs them with those generators seeded from the sample's own generator and restores their
states afterwards (``seeded_global_rngs``): the draws are a function of (seed, epoch, index), as
the crop is, so a resumed run augments every sample bit-identically, and nothing else that uses
the global generators (drop path, other libraries) sees a different sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandAugment, RandomErasing

from beit_ds.config import AugmentConfig, TransformConfig
from beit_ds.data.decode import EncodedImage
from beit_ds.data.transforms import TrainTransform

GREY_FILL = [128, 128, 128]  # torchvision RandAugment's fill for pixels a geometric op uncovers
PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "lanczos": Image.Resampling.LANCZOS}


def timm_policy(augment: AugmentConfig) -> str:
    """timm's config string for ``augment``, e.g. ``rand-m9-n2-mstd0.5-inc1``."""
    return f"rand-m{augment.rand_augment_magnitude}-n{augment.rand_augment_ops}-mstd{augment.rand_augment_mstd:g}-inc1"


def timm_hparams(cfg: TransformConfig) -> dict[str, object]:
    """The hyper-parameters timm's ``create_transform`` passes to RandAugment for this view:
    translation 45 % of the size, fill = the normalisation mean in uint8, the view's resampling."""
    return {
        "translate_const": int(cfg.input_size * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in cfg.mean),
        "interpolation": PIL_RESAMPLE.get(cfg.interpolation, Image.Resampling.BICUBIC),
    }


def build_rand_augment(
    cfg: TransformConfig, augment: AugmentConfig
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """RandAugment on a uint8 ``[3, S, S]`` tensor (``None`` when ``rand_augment_ops`` is 0)."""
    if augment.rand_augment_ops == 0:
        return None
    if augment.rand_augment_impl == "torchvision":
        return RandAugment(augment.rand_augment_ops, augment.rand_augment_magnitude, fill=GREY_FILL)
    from timm.data.auto_augment import rand_augment_transform

    policy = rand_augment_transform(timm_policy(augment), timm_hparams(cfg))

    def apply(x: torch.Tensor) -> torch.Tensor:
        out = policy(Image.fromarray(x.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)

    apply.policy = policy  # type: ignore[attr-defined]  # the timm object, for inspection
    return apply


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's ``random``, NumPy's global and torch's CPU generators seeded from ``seed`` inside
    the block, each restored to its previous state after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class AugmentedTrainTransform:
    """Crop, flip and jitter (``TrainTransform``) → RandAugment → normalise → random erasing."""

    def __init__(self, cfg: TransformConfig, augment: AugmentConfig) -> None:
        self.base = TrainTransform(cfg)
        self.rand_augment = build_rand_augment(cfg, augment)
        self.erasing = None
        if augment.random_erasing > 0:
            self.erasing = RandomErasing(p=augment.random_erasing, value="random")

    def __call__(self, enc: EncodedImage, rng: np.random.Generator) -> torch.Tensor:
        """Normalised float ``[3, S, S]``."""
        x = self.base.unnormalized(enc, rng)
        with seeded_global_rngs(int(rng.integers(2**63))):
            if self.rand_augment is not None:
                x = self.rand_augment(x.mul(255).round_().to(torch.uint8)).float().div_(255)
            x = self.base.normalize(x)
            if self.erasing is not None:
                x = self.erasing(x)
        return x
