"""Semantic-segmentation batches and their loader (seed §3.2, App. B).

``build_segmentation_loader`` is ``build_finetune_loader``'s counterpart: the pairs of a split
(``seg_sources``) → ``SegDataset`` (read, decode, map labels, joint transform; in training a bad
pair is skipped and replaced by the next, as ``ImageDataset`` does) → ``ResumableLoader`` (the
same positions, ``at(epoch, start)`` resume, skip report, worker signal handling and
``data.timeout``). Training batches are ``crop_size``² crops, shuffled, with equal batch counts on
every rank; evaluation batches hold one image each (sizes differ), in order, every image once over
all ranks, the label at the file's own resolution (mmseg computes its metrics there). Evaluation
never substitutes (another image would be scored twice): a bad pair gives an empty batch
(``len(batch) == 0``) and is counted in the loader's skip report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from beit_ds.config import SegDataConfig, reduces_zero_label
from beit_ds.data.collate import Reads, Sample
from beit_ds.data.datasets import load_substituting, transform_rng
from beit_ds.data.decode import decode, decode_label, open_image
from beit_ds.data.loader import LoaderPlace, ResumableLoader
from beit_ds.data.records import ByteReader
from beit_ds.data.seg_sources import SegPairs, build_seg_pairs
from beit_ds.data.seg_transforms import IGNORE, LabelMap, SegEvalTransform, SegTrainTransform
from beit_ds.data.skips import SkipSample

__all__ = ["IGNORE", "SegBatch", "SegDataset", "build_segmentation_loader", "collate_segments"]


@dataclass
class SegBatch:
    """``images`` [B, 3, H, W] float32 (normalised), ``labels`` [B, H', W'] int64 (``IGNORE`` = 255
    ignored; H', W' = H, W for training crops, the original size in evaluation), ``indices`` [B]
    int64 global sample indices."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SegBatch:
        """Moved to ``device``; only ``images`` cast to ``dtype`` when given."""
        return SegBatch(
            self.images.to(device=device, dtype=dtype, non_blocking=True),
            self.labels.to(device=device, non_blocking=True),
            self.indices.to(device=device, non_blocking=True),
        )

    def pin_memory(self) -> SegBatch:
        """Page-locked copies (called by ``DataLoader(pin_memory=True)``)."""
        return SegBatch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory())


def collate_segments(samples: Sequence[Sample]) -> tuple[SegBatch, Reads]:
    """Stack the (image, label) samples that loaded into a ``SegBatch`` (an evaluation pair that
    did not load has no views: left out, the batch may be empty); also return what they read."""
    kept = [s for s in samples if s.views]
    if not kept:
        batch = SegBatch(
            torch.zeros(0, 3, 0, 0),
            torch.zeros(0, 0, 0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
        )
    else:
        batch = SegBatch(
            images=torch.stack([s.views[0] for s in kept]),
            labels=torch.stack([s.views[1] for s in kept]),
            indices=torch.tensor([s.index for s in kept], dtype=torch.int64),
        )
    reads = Reads([s.image for s in samples if s.image >= 0], [skip for s in samples for skip in s.skips])
    return batch, reads


class SegDataset(Dataset):
    """``pairs`` × ``repeats`` through ``transform``: ``dataset[(epoch, index)]`` → ``Sample`` with
    views (image [3, H, W] float32, label [H', W'] int64). A pair that fails to load is replaced by
    the next one when ``substitute`` (training), else its ``Sample`` has no views (evaluation)."""

    max_substitutes = 16

    def __init__(
        self,
        pairs: SegPairs,
        transform: SegTrainTransform | SegEvalTransform,
        label_map: LabelMap,
        seed: int,
        max_image_pixels: int,
        repeats: int = 1,
        substitute: bool = True,
    ) -> None:
        self.pairs, self.records = pairs, pairs.images
        self.transform, self.label_map, self.seed = transform, label_map, seed
        self.max_image_pixels, self.repeats, self.substitute = max_image_pixels, repeats, substitute
        self.read, self.read_label = ByteReader(pairs.images), ByteReader(pairs.labels)

    def __len__(self) -> int:
        return len(self.records) * self.repeats

    def listing_skips(self) -> list[tuple[str, str]]:
        """Non-image files below the image folder (``ignored``) and images without a label (``no_label``)."""
        return [("ignored", p) for p in self.records.ignored] + [
            ("no_label", p) for p in self.pairs.unlabelled
        ]

    def load(self, image: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Read, check, decode and transform pair ``image`` (raises ``SkipSample``, ``DataError``)."""
        path, label_path = self.records.location(image), self.pairs.labels.location(image)
        enc = open_image(self.read(image), path, self.max_image_pixels)
        try:
            label_enc = open_image(self.read_label(image), label_path, self.max_image_pixels)
            if label_enc.size != enc.size:
                (w, h), (lw, lh) = enc.size, label_enc.size
                raise SkipSample(
                    "label_size", f"{label_path}: {lw}x{lh} label map for the {w}x{h} image {path}"
                )
            raw = decode_label(label_enc)
        except SkipSample as skip:
            raise SkipSample(skip.reason, skip.detail, path=label_path) from skip
        labels = self.label_map(raw, label_path)
        pixels = np.array(decode(enc)[0])  # writable: torch wraps it without a copy
        return self.transform(pixels, labels, rng)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        rng = transform_rng(self.seed, epoch, index)
        if self.substitute:
            image, views, skips = load_substituting(self, index, rng)
            return Sample(index, views, skips=skips, image=image)
        image = index % len(self.records)
        try:
            return Sample(index, self.load(image, rng), image=image)
        except SkipSample as skip:
            return Sample(index, (), skips=[(skip.reason, skip.path or self.records.location(image), image)])


def build_segmentation_loader(
    data: SegDataConfig,
    split: str,
    place: LoaderPlace,
    num_classes: int,
    pairs: SegPairs | None = None,
) -> ResumableLoader:
    """``SegBatch`` loader of ``split`` for ``place``: ``"train"`` (random crops, shuffled, equal
    batch counts per rank, ``data.repeats``) or ``"eval"`` (batch size 1 whatever
    ``place.batch_size`` says, in order, nothing dropped, labels at original size, a bad pair an
    empty batch: never substituted). Labels are
    classes 0..``num_classes``-1 and ``IGNORE``; ``pairs`` skips listing the source."""
    pairs = pairs if pairs is not None else build_seg_pairs(data, split)
    label_map = LabelMap(num_classes, reduces_zero_label(data), data.ignore_index)
    train = split == "train"
    transform = SegTrainTransform(data.transform) if train else SegEvalTransform(data.transform)
    if not train:
        place = replace(place, batch_size=1)
    dataset = SegDataset(
        pairs,
        transform,
        label_map,
        place.seed,
        data.max_image_pixels,
        data.repeats if train else 1,
        substitute=train,
    )
    return ResumableLoader(dataset, collate_segments, place, data, train=train)
