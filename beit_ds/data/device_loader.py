"""``DeviceLoader``: the on-device data path (``data.on_device: true``) for data sets that fit in memory.

The split is decoded once (``resident.py``) and held on the training device as one uint8 tensor
``[M, 3, H, W]``; each batch is gathered there and cut into views by ``batch_views.BatchViews``
(crop, flip, jitter, erasing) with masks from ``batch_masks.BatchMasks``, every random number drawn
from the counter hash keyed by (seed, epoch, index). No worker processes, no per-sample Python.

To the runtime it is the same ``Loader`` as ``ResumableLoader``: ``len``, ``at(epoch, start_sample)``,
``state_dict()`` (epoch, global position), a ``report`` of skipped files, and batches of the same
types (``MIMBatch``, ``ClassBatch``) already on the device. The order is the worker path's:
``ResumableDistributedSampler`` with the same seed gives each rank the same indices, so switching
paths changes the augmentation draws but not which images a step sees, and a resume — on any
number of ranks — continues exactly.

Not reproduced on the device: RandAugment (``augment.rand_augment_ops > 0`` is refused in one
line) and the DINO multi-crop views (``kind: dino`` refuses ``data.on_device``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from beit_ds.config import AugmentConfig, ConfigError, DataConfig
from beit_ds.data.batch_masks import BatchMasks
from beit_ds.data.batch_views import BatchViews, Draws
from beit_ds.data.collate import ClassBatch, MIMBatch
from beit_ds.data.loader import LoaderPlace
from beit_ds.data.records import Records
from beit_ds.data.resident import cached_split
from beit_ds.data.sampler import ResumableDistributedSampler
from beit_ds.data.skips import DataError, SkipReport
from beit_ds.distributed import place_from_env
from beit_ds.masking import MaskGenerator

MASK_CHUNK = 2048  # samples whose masks are drawn together (the lockstep rounds cost per call)


def training_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    return torch.device("cuda", place_from_env().local_rank) if torch.cuda.is_available() else torch.device("cpu")


def check_on_device(data: DataConfig, augment: AugmentConfig | None) -> None:
    """One-line ``ConfigError`` for an augmentation the on-device path does not reproduce."""
    if data.on_device and augment is not None and augment.rand_augment_ops > 0:
        raise ConfigError(
            f"augment.rand_augment_ops={augment.rand_augment_ops}: RandAugment has no on-device version"
            " (data.on_device=true); set augment.rand_augment_ops=0 or data.on_device=false"
        )


@dataclass
class DeviceImages:
    """A split on the device: ``pixels [M, 3, H, W]`` uint8, ``rows [N]`` (the row of each table
    entry), ``labels [M]`` or None, the source's ``classes`` / ``class_counts`` and its ``report``."""

    pixels: torch.Tensor
    rows: torch.Tensor
    labels: torch.Tensor | None
    classes: tuple[str, ...] | None
    class_counts: list[int]
    report: SkipReport

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of every image."""
        return int(self.pixels.shape[3]), int(self.pixels.shape[2])


def device_images(data: DataConfig, records: Records, device: torch.device) -> DeviceImages:
    """``records`` decoded (or read from the cache) onto ``device``; bad files reported and limited
    by ``data.max_skip_fraction``."""
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else None
    decoded = cached_split(records, data.on_device_size, data.max_image_pixels, cache)
    report = SkipReport()
    for path in records.ignored:
        report.add("ignored", path)
    report.extend(decoded.skips)
    bad = {file for _, _, file in decoded.skips}
    report.mark_loaded([i for i in range(len(records)) if i not in bad])  # every file has been read
    report.loaded = 0  # from here: images delivered in batches, as the worker path counts them
    limit = data.max_skip_fraction
    if limit < 1 and report.skip_fraction > limit:
        raise DataError(
            f"data.max_skip_fraction={limit}: {report.skipped} of {report.files} distinct files read were"
            f" bad ({report.skip_fraction:.1%}); {report.summary()}"
        )
    pixels = torch.from_numpy(decoded.pixels).to(device).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(decoded.labels).to(device) if decoded.labels is not None else None
    rows = torch.from_numpy(decoded.rows).to(device)
    return DeviceImages(pixels, rows, labels, records.classes, records.class_counts(), report)


class DeviceLoader:
    """Batches of ``images`` for ``place`` cut by ``views`` (with ``masks``: ``MIMBatch`` objects,
    else ``ClassBatch`` objects); ``train`` = shuffled, equal batch counts on every rank."""

    def __init__(self, images: DeviceImages, views: BatchViews, place: LoaderPlace, train: bool,
                 masks: BatchMasks | None = None, repeats: int = 1) -> None:
        self.images, self.views, self.place, self.train = images, views, place, train
        self.masks, self.repeats = masks, repeats
        self.sampler = ResumableDistributedSampler(
            num_samples=self.num_samples, rank=place.rank, world_size=place.world_size, seed=place.seed,
            epoch=place.epoch, start_sample=place.start_sample, shuffle=train, drop_last=train,
        )
        self._batches = 0

    @property
    def report(self) -> SkipReport:
        return self.images.report

    @property
    def num_samples(self) -> int:
        """Samples in one epoch over all ranks (images × ``data.repeats`` for training)."""
        return len(self.images.rows) * self.repeats

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.images.classes

    def class_counts(self) -> list[int]:
        return self.images.class_counts

    def __len__(self) -> int:
        b, n = self.place.batch_size, len(self.sampler)
        return n // b if self.train else (n + b - 1) // b

    def at(self, epoch: int, start_sample: int = 0) -> DeviceLoader:
        """The loader of ``epoch`` from ``start_sample``: same images on the device, same report."""
        place = replace(self.place, epoch=epoch, start_sample=start_sample)
        return DeviceLoader(self.images, self.views, place, self.train, self.masks, self.repeats)

    def state_dict(self) -> dict[str, int]:
        """``epoch`` and ``position``: samples of the epoch consumed by all ranks so far."""
        consumed = self._batches * self.place.batch_size * self.place.world_size
        return {"epoch": self.place.epoch, "position": self.place.start_sample + consumed}

    def __iter__(self) -> Iterator[Any]:  # as ResumableLoader: the batch type the builder chose
        self._batches = 0
        return self._epoch()

    def _epoch(self) -> Iterator[MIMBatch | ClassBatch]:
        b, count = self.place.batch_size, len(self)
        indices = torch.from_numpy(self.sampler.indices()[: count * b] if self.train else self.sampler.indices())
        on_device = indices.to(self.images.pixels.device, non_blocking=True)
        chunk = max(1, MASK_CHUNK // b)  # batches per mask draw
        for first in range(0, count, chunk):
            masks = self._masks(indices[first * b : (first + chunk) * b])
            for k in range(first, min(first + chunk, count)):
                sel = slice(k * b, (k + 1) * b)
                batch_masks = masks[(k - first) * b : (k - first + 1) * b] if masks is not None else None
                batch = self._batch(indices[sel], on_device[sel], batch_masks)
                self._batches += 1
                yield batch

    def _masks(self, indices: torch.Tensor) -> torch.Tensor | None:
        """The masks of ``indices`` (CPU: a few bytes per sample), moved to the device."""
        if self.masks is None:
            return None
        masks = self.masks(self.place.seed, self.place.epoch, indices)
        device = self.images.pixels.device
        if device.type == "cuda":
            masks = masks.pin_memory()
        return masks.to(device, non_blocking=True)

    def _batch(self, indices: torch.Tensor, on_device: torch.Tensor, masks: torch.Tensor | None) -> MIMBatch | ClassBatch:
        images = self.images
        rows = images.rows[on_device % len(images.rows)]
        views = self.views(images.pixels[rows], Draws(self.place.seed, self.place.epoch, indices))
        labels = images.labels[rows] if images.labels is not None else None
        images.report.loaded += len(indices)
        if masks is not None:
            return MIMBatch(views[0], views[1], masks, indices, labels)
        if labels is None:
            raise DataError("the on-device classification loader needs labels")
        return ClassBatch(views[0], labels, indices)  # indices on the host, as the worker path's


def build_device_pretrain_loader(
    data: DataConfig, masks: MaskGenerator, place: LoaderPlace, records: Records, device: torch.device | None = None
) -> DeviceLoader:
    """``MIMBatch`` loader of ``records`` on ``device`` (default ``training_device()``)."""
    images = device_images(data, records, device if device is not None else training_device())
    views = BatchViews(data.transform, images.size, "two")
    return DeviceLoader(images, views, place, train=True, masks=BatchMasks(masks), repeats=data.repeats)


def build_device_finetune_loader(
    data: DataConfig, split: str, place: LoaderPlace, records: Records, augment: AugmentConfig | None = None,
    device: torch.device | None = None,
) -> DeviceLoader:
    """``ClassBatch`` loader of ``split``'s ``records`` on ``device``: ``"train"`` crops, flips,
    jitters and erases (``augment.random_erasing``), ``"eval"`` takes centre crops in order."""
    train = split == "train"
    check_on_device(data, augment if train else None)
    images = device_images(data, records, device if device is not None else training_device())
    erasing = augment.random_erasing if train and augment is not None else 0.0
    views = BatchViews(data.transform, images.size, "train" if train else "eval", erasing)
    return DeviceLoader(images, views, place, train, repeats=data.repeats if train else 1)
