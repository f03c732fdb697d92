"""Data pipeline: the engine asks for "a loader for this section of the recipe, this rank".

``build_pretrain_loader`` yields ``MIMBatch`` objects (two views + mask, seed §2.3 / §2.5) and
``build_finetune_loader`` ``ClassBatch`` objects of a labelled training or evaluation split. Both
return a ``ResumableLoader`` whose ``state_dict()`` is (epoch, global position in samples), whose
``at(epoch, start_sample)`` makes the loader of a later epoch (no rescan of the source), and whose
``report`` counts skipped images per reason with example paths.

Modules: ``sources`` (``data.source`` → ``Records``; folder / file list in ``records``, tar shards
and plain tar archives in ``shards``, compressed archives in ``archive``, the bundled photographs
in ``demo``), ``decode`` (bytes → RGB, robustly), ``transforms`` (crop, views, jitter), ``datasets``
(seeded per-sample loading with substitutes for bad images), ``collate`` (batches), ``sampler``
(resumable distributed order) and ``loader``; for fine-tuning ``augment`` (RandAugment, random
erasing) and ``mixup`` (Mixup / CutMix targets, applied to a batch by the training step). Semantic
segmentation: ``build_segmentation_loader`` yields ``SegBatch`` objects (``segmentation``;
pairs of images and label maps from ``seg_sources``, joint transforms in ``seg_transforms``).
``data.on_device``: the same batches from ``device_loader`` instead — the split decoded once
(``resident``), views and masks cut in batches on the training device (``batch_views``,
``resample``, ``batch_masks``) from counter-based draws (``counter_rng``).
"""

from __future__ import annotations

from collections.abc import Sequence

from beit_ds.config import AugmentConfig, DataConfig, MaskingConfig
from beit_ds.data.augment import AugmentedTrainTransform
from beit_ds.data.collate import ClassBatch, MIMBatch, collate_classes, collate_mim
from beit_ds.data.datasets import ImageDataset
from beit_ds.data.device_loader import (
    DeviceLoader,
    build_device_finetune_loader,
    build_device_pretrain_loader,
)
from beit_ds.data.loader import LoaderPlace, ResumableLoader
from beit_ds.data.records import Records
from beit_ds.data.segmentation import SegBatch, build_segmentation_loader
from beit_ds.data.skips import DataError, SkipReport
from beit_ds.data.sources import build_records
from beit_ds.data.transforms import EvalTransform, TrainTransform, TwoViewTransform
from beit_ds.masking import build_mask_generator

ImageLoader = ResumableLoader | DeviceLoader  # what the image builders return (data.on_device picks)

__all__ = [
    "ClassBatch",
    "DataError",
    "DeviceLoader",
    "ImageLoader",
    "LoaderPlace",
    "MIMBatch",
    "Records",
    "ResumableLoader",
    "SegBatch",
    "SkipReport",
    "build_finetune_loader",
    "build_pretrain_loader",
    "build_records",
    "build_segmentation_loader",
]


def _check_grid(data: DataConfig, grid: tuple[int, int]) -> None:
    size = data.transform.input_size
    if size % grid[0] or size % grid[1]:
        raise DataError(f"data.transform.input_size={size}: not divisible by the patch grid {grid}")


def build_pretrain_loader(
    data: DataConfig,
    masking: MaskingConfig,
    grid: tuple[int, int],
    place: LoaderPlace,
    records: Records | None = None,
) -> ImageLoader:
    """``MIMBatch`` loader of the training images for ``place`` (rank, batch, seed, epoch, position).

    ``grid`` is the model's patch grid (H, W) for the masks; ``records`` skips listing the source.
    ``data.on_device``: the on-device path (``device_loader.py``) instead of worker processes.
    """
    _check_grid(data, grid)
    records = records if records is not None else build_records(data, "train")
    if data.on_device:
        return build_device_pretrain_loader(data, build_mask_generator(masking, grid), place, records)
    dataset = ImageDataset(
        records,
        TwoViewTransform(data.transform),
        seed=place.seed,
        max_image_pixels=data.max_image_pixels,
        repeats=data.repeats,
        masks=build_mask_generator(masking, grid),
    )
    return ResumableLoader(dataset, collate_mim, place, data, train=True)


def build_finetune_loader(
    data: DataConfig,
    split: str,
    place: LoaderPlace,
    classes: Sequence[str] | None = None,
    records: Records | None = None,
    augment: AugmentConfig | None = None,
) -> ImageLoader:
    """``ClassBatch`` loader of ``split`` (``"train"``: augmented, shuffled; ``"eval"``: centre crops,
    in order, nothing dropped). ``classes``: the training classes an evaluation set is mapped onto.
    ``augment``: RandAugment and random erasing of the training split (``data/augment.py``).
    """
    records = records if records is not None else build_records(data, split, classes)
    records.require_labels(f"fine-tuning ({split} split)")
    if data.on_device:
        return build_device_finetune_loader(data, split, place, records, augment)
    train = split == "train"
    transform: TrainTransform | EvalTransform | AugmentedTrainTransform = (
        TrainTransform(data.transform) if train else EvalTransform(data.transform)
    )
    if train and augment is not None:
        transform = AugmentedTrainTransform(data.transform, augment)
    dataset = ImageDataset(
        records,
        transform,
        seed=place.seed,
        max_image_pixels=data.max_image_pixels,
        repeats=data.repeats if train else 1,
    )
    return ResumableLoader(dataset, collate_classes, place, data, train=train)
