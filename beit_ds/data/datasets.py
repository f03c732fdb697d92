"""The map-style dataset: ``dataset[(epoch, index)]`` → one transformed ``Sample`` (issue 4).

Index ``i`` in ``[0, len(records) · repeats)`` is image ``i mod len(records)``. Everything random
about a sample — crop, flip, jitter (``transform_rng``) and the mask (``masking.mask_rng``) — is
drawn from generators seeded by (seed, epoch, index), never from global state, so a sample is the
same whichever rank or worker loads it and whenever. An image that cannot be used is recorded as a
skip and the next image in the table is loaded in its place (same generator, deterministic), so
batches keep their size; after ``max_substitutes`` failures in a row the loader stops with an error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from beit_ds.data.collate import Sample
from beit_ds.data.decode import EncodedImage, open_image
from beit_ds.data.records import ByteReader, Records
from beit_ds.data.skips import DataError, SkipSample
from beit_ds.masking import MaskGenerator, mask_rng

TRANSFORM_STREAM = 0x7472  # "tr": keeps the transform's generator apart from the mask's
Transform = Callable[[EncodedImage, np.random.Generator], "torch.Tensor | tuple[torch.Tensor, ...]"]


def transform_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The crop / flip / jitter generator of sample ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index, TRANSFORM_STREAM])


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

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        rng = transform_rng(self.seed, epoch, index)
        n, skips = len(self.records), []
        for attempt in range(self.max_substitutes + 1):
            image = (index + attempt) % n
            try:
                views = self.load(image, rng)
                break
            except SkipSample as skip:
                skips.append((skip.reason, self.records.location(image), image))
        else:
            shown = "; ".join(f"{reason}: {path}" for reason, path, _ in skips[:3])
            raise DataError(f"{self.max_substitutes + 1} images in a row failed to load ({shown}, ...)")
        labels = self.records.labels
        mask = self.masks(mask_rng(self.seed, epoch, index)) if self.masks is not None else None
        label = int(labels[image]) if labels is not None else None
        return Sample(index, views, label, mask, skips, image)
