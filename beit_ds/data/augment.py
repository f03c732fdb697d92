"""Fine-tuning augmentation after the crop (seed App. H, following DeiT): RandAugment on the
uint8 view, normalisation, then random erasing with per-pixel noise.

Both use torchvision's implementations (``RandAugment``: ``rand_augment_ops`` operations of
magnitude ``rand_augment_magnitude`` out of 30 bins, grey fill; ``RandomErasing``: one rectangle
of 2-33 % of the area, normal noise). They draw from torch's global generator, so each sample runs
them inside ``torch.random.fork_rng`` seeded from the sample's own generator: the draws are a
function of (seed, epoch, index), as the crop is, and the training process's generator (drop
path) is untouched. Timm's ``rand-m9-mstd0.5-inc1`` policy, which unilm used, additionally jitters
the magnitude and applies each operation with probability 0.5; it is not reproduced here.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import RandAugment, RandomErasing

from beit_ds.config import AugmentConfig, TransformConfig
from beit_ds.data.decode import EncodedImage
from beit_ds.data.transforms import TrainTransform

GREY_FILL = [128, 128, 128]  # RandAugment's fill for pixels a geometric operation uncovers


class AugmentedTrainTransform:
    """Crop, flip and jitter (``TrainTransform``) → RandAugment → normalise → random erasing."""

    def __init__(self, cfg: TransformConfig, augment: AugmentConfig) -> None:
        self.base = TrainTransform(cfg)
        self.rand_augment = None
        if augment.rand_augment_ops > 0:
            self.rand_augment = RandAugment(
                augment.rand_augment_ops, augment.rand_augment_magnitude, fill=GREY_FILL
            )
        self.erasing = None
        if augment.random_erasing > 0:
            self.erasing = RandomErasing(p=augment.random_erasing, value="random")

    def __call__(self, enc: EncodedImage, rng: np.random.Generator) -> torch.Tensor:
        """Normalised float ``[3, S, S]``."""
        x = self.base.unnormalized(enc, rng)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            if self.rand_augment is not None:
                x = self.rand_augment(x.mul(255).round_().to(torch.uint8)).float().div_(255)
            x = self.base.normalize(x)
            if self.erasing is not None:
                x = self.erasing(x)
        return x
