"""Multi-crop data for MIM + DINO pre-training (seed App. E; DINO's multi-crop, Caron et al. 2021).

Each image gives two **global** crops, each a BEiT two-view pair (patch view at the model's
resolution + tokenizer view, ``TwoViewTransform``, with its own random-resized crop, flip and
jitter, and its own blockwise mask), plus ``L`` **local** crops (``local_size``², a fraction in
``local_scale`` of the image, flip and jitter, normalised). All draws come from the sample's
generators (``transform_rng`` / ``mask_rng`` of (seed, epoch, index)), so a resumed run sees the
same crops and masks. ``DinoBatch`` stacks the views view-major, as DINO's loss reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from beit_ds.config import DataConfig, MaskingConfig
from beit_ds.data.collate import Reads, Sample, batch_reads, sample_labels, to_device
from beit_ds.data.datasets import ImageDataset
from beit_ds.data.decode import EncodedImage
from beit_ds.data.loader import LoaderPlace, ResumableLoader
from beit_ds.data.records import Records
from beit_ds.data.sources import build_records
from beit_ds.data.transforms import TrainTransform, TwoViewTransform
from beit_ds.masking import MaskGenerator, build_mask_generator

GLOBAL_VIEWS = 2


class MultiCropTransform:
    """``(enc, rng) ->`` (patch₁, tokenizer₁, patch₂, tokenizer₂, local₁, …, local_L) ``[3, ·, ·]``."""

    def __init__(
        self, data: DataConfig, local_crops: int, local_size: int, local_scale: tuple[float, float]
    ) -> None:
        self.global_view = TwoViewTransform(data.transform)
        local_cfg = replace(data.transform, input_size=local_size, scale=(float(local_scale[0]), float(local_scale[1])))
        self.local_view = TrainTransform(local_cfg)
        self.local_crops = local_crops

    def __call__(self, enc: EncodedImage, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        views: list[torch.Tensor] = []
        for _ in range(GLOBAL_VIEWS):
            views.extend(self.global_view(enc, rng))
        views.extend(self.local_view(enc, rng) for _ in range(self.local_crops))
        return tuple(views)


class PerViewMasks:
    """One mask per global view, ``[2, H, W]``, drawn in turn from the sample's mask generator."""

    def __init__(self, masks: MaskGenerator, views: int = GLOBAL_VIEWS) -> None:
        self.masks, self.views = masks, views
        self.grid, self.num_masking_patches = masks.grid, masks.num_masking_patches

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self.masks(rng) for _ in range(self.views)])


@dataclass
class DinoBatch:
    """A multi-crop batch of B images, views stacked view-major (rows ``v·B + i`` = view v of image i).

    ``global_images`` ``[2·B, 3, H, W]`` normalised patch views; ``tokenizer_images`` ``[2·B, 3, h, w]``;
    ``bool_masked_pos`` ``[2·B, gh, gw]`` (each global view its own mask); ``local_images``
    ``[L·B, 3, s, s]`` (L = 0: an empty tensor); ``indices`` ``[B]``; ``labels`` ``[B]`` or None.
    """

    global_images: torch.Tensor
    tokenizer_images: torch.Tensor
    bool_masked_pos: torch.Tensor
    local_images: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DinoBatch:
        """Moved to ``device``; the image tensors also cast to ``dtype`` when given."""
        return DinoBatch(to_device(self.global_images, device, dtype), to_device(self.tokenizer_images, device, dtype),
                         to_device(self.bool_masked_pos, device), to_device(self.local_images, device, dtype),
                         to_device(self.indices, device), to_device(self.labels, device))

    def pin_memory(self) -> DinoBatch:
        labels = self.labels.pin_memory() if self.labels is not None else None
        return DinoBatch(self.global_images.pin_memory(), self.tokenizer_images.pin_memory(),
                         self.bool_masked_pos.pin_memory(), self.local_images.pin_memory(),
                         self.indices.pin_memory(), labels)


def _view_major(samples: Sequence[Sample], views: range) -> torch.Tensor:
    return torch.stack([s.views[v] for v in views for s in samples])


def collate_dino(samples: Sequence[Sample]) -> tuple[DinoBatch, Reads]:
    """Stack multi-crop samples (``MultiCropTransform`` views, ``PerViewMasks`` masks) into a ``DinoBatch``."""
    n_views = len(samples[0].views)
    patches = range(0, 2 * GLOBAL_VIEWS, 2)
    local = range(2 * GLOBAL_VIEWS, n_views)
    locals_ = _view_major(samples, local) if n_views > 2 * GLOBAL_VIEWS else torch.empty(0, 3, 1, 1)
    if any(s.mask is None for s in samples):
        raise ValueError("collate_dino: every sample needs its per-view masks")
    masks = np.stack([np.asarray(s.mask)[v] for v in range(GLOBAL_VIEWS) for s in samples])
    batch = DinoBatch(
        global_images=_view_major(samples, patches),
        tokenizer_images=_view_major(samples, range(1, 2 * GLOBAL_VIEWS, 2)),
        bool_masked_pos=torch.from_numpy(masks),
        local_images=locals_,
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        labels=sample_labels(samples),
    )
    return batch, batch_reads(samples)


@dataclass(frozen=True)
class MultiCrop:
    """The local crops of a multi-crop loader: how many, their side and area fraction."""

    crops: int = 8
    size: int = 96
    scale: tuple[float, float] = (0.05, 0.4)


def build_dino_loader(
    data: DataConfig,
    masking: MaskingConfig,
    grid: tuple[int, int],
    crops: MultiCrop,
    place: LoaderPlace,
    records: Records | None = None,
) -> ResumableLoader:
    """``DinoBatch`` loader of the training images for ``place``; ``grid``: the model's patch grid."""
    records = records if records is not None else build_records(data, "train")
    dataset = ImageDataset(
        records,
        MultiCropTransform(data, crops.crops, crops.size, crops.scale),
        seed=place.seed,
        max_image_pixels=data.max_image_pixels,
        repeats=data.repeats,
        masks=PerViewMasks(build_mask_generator(masking, grid)),
    )
    return ResumableLoader(dataset, collate_dino, place, data, train=True)
