"""The map-style dataset: ``dataset[(epoch, index)]`` → one transformed ``Sample``.

Index ``i`` in ``[0, len(records) · repeats)`` is image ``i mod len(records)``. Everything random
about a sample — crop, flip, jitter (``transform_rng``) and the mask (``masking.mask_rng``) — is
drawn from generators seeded by (seed, epoch, index), never from global state, so a sample is the
same whichever rank or worker loads it and whenever. An image that cannot be used is recorded as a
skip and the next image in the table is loaded in its place (same generator, deterministic), so
batches keep their size; after ``max_substitutes`` failures in a row the loader stops with an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from beit_ds.data.collate import Sample, Skips
from beit_ds.data.decode import EncodedImage, open_image
from beit_ds.data.records import ByteReader, Records
from beit_ds.data.skips import DataError, SkipSample
from beit_ds.masking import MaskGenerator, mask_rng

TRANSFORM_STREAM = 0x7472  # "tr": keeps the transform's generator apart from the mask's
Transform = Callable[[EncodedImage, np.random.Generator], "torch.Tensor | tuple[torch.Tensor, ...]"]


def transform_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The crop / flip / jitter generator of sample ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index, TRANSFORM_STREAM])


class Substitutable(Protocol):
    """A dataset whose ``load(image, rng)`` reads table entry ``image`` or raises ``SkipSample``."""

    records: Records
    max_substitutes: int

    def load(self, image: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]: ...


def load_substituting(
    dataset: Substitutable, index: int, rng: np.random.Generator
) -> tuple[int, tuple[torch.Tensor, ...], Skips]:
    """(table index loaded, its views, skipped reads) for sample ``index``: entry ``index mod N``,
    or the next entries in turn while ``load`` raises ``SkipSample``."""
    n = len(dataset.records)
    skips: Skips = []
    for attempt in range(dataset.max_substitutes + 1):
        image = (index + attempt) % n
        try:
            return image, dataset.load(image, rng), skips
        except SkipSample as skip:
            skips.append((skip.reason, skip.path or dataset.records.location(image), image))
    shown = "; ".join(f"{reason}: {path}" for reason, path, _ in skips[:3])
    raise DataError(f"{dataset.max_substitutes + 1} images in a row failed to load ({shown}, ...)")


class ImageDataset(Dataset):
    """``records`` × ``repeats`` images through ``transform``, with a mask when ``masks`` is given."""

    def __init__(
        self,
        records: Records,
        transform: Transform,
        seed: int,
        max_image_pixels: int,
        repeats: int = 1,
        masks: MaskGenerator | None = None,
        max_substitutes: int = 16,
    ) -> None:
        self.records, self.transform, self.seed = records, transform, seed
        self.max_image_pixels, self.repeats = max_image_pixels, repeats
        self.masks, self.max_substitutes = masks, max_substitutes
        self.read = ByteReader(records)

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def load(self, image: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Read, decode and transform image ``image`` of the table (raises ``SkipSample``)."""
        path = self.records.location(image)
        views = self.transform(open_image(self.read(image), path, self.max_image_pixels), rng)
        return views if isinstance(views, tuple) else (views,)

    def listing_skips(self) -> list[tuple[str, str]]:
        """(reason, path) of the files the listing found but will never read: non-images."""
        return [("ignored", path) for path in self.records.ignored]

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        rng = transform_rng(self.seed, epoch, index)
        image, views, skips = load_substituting(self, index, rng)
        labels = self.records.labels
        mask = self.masks(mask_rng(self.seed, epoch, index)) if self.masks is not None else None
        label = int(labels[image]) if labels is not None else None
        return Sample(index, views, label, mask, skips, image)
