"""Typed batches (house style: a batch is an object, not a tuple) and the collate functions.

A loader worker returns one ``Sample`` per index; ``collate_mim`` / ``collate_classes`` stack them
into a ``MIMBatch`` / ``ClassBatch`` and pass a ``Reads`` log alongside (which files were loaded,
which skipped), so that the loader in the training process can count, per distinct file, what
happened in worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

Skips = list[tuple[str, str, int]]  # (reason, path, table index) per skipped read


@dataclass
class Sample:
    """One loaded image: ``views`` (float [3, H, W] each), label, mask [gh, gw] and skipped reads.

    ``index`` is the sample's global index, ``image`` the table index of the file actually loaded
    (``index`` mod N, or the substitute's after skips; -1 when unknown).
    """

    index: int
    views: tuple[torch.Tensor, ...]
    label: int | None = None
    mask: np.ndarray | None = None
    skips: Skips = field(default_factory=list)
    image: int = -1


@dataclass
class Reads:
    """What one batch read: table indices of the ``loaded`` files and the skipped reads."""

    loaded: list[int]
    skips: Skips


def to_device(x: torch.Tensor | None, device: torch.device | str, dtype: torch.dtype | None = None):
    """A batch field on ``device`` (cast to ``dtype`` when given), copied asynchronously; None stays None."""
    if x is None:
        return None
    return x.to(device=device, dtype=dtype, non_blocking=True)


@dataclass
class MIMBatch:
    """A pre-training batch (seed §2.3).

    ``images`` [B, 3, H, W] float, normalised patch view; ``tokenizer_images`` [B, 3, h, w] float,
    the tokenizer's input (DALL-E ``map_pixels`` or raw [0, 1]); ``bool_masked_pos`` [B, gh, gw]
    bool, True = masked; ``indices`` [B] int64 global sample indices; ``labels`` [B] int64 or None.
    """

    images: torch.Tensor
    tokenizer_images: torch.Tensor
    bool_masked_pos: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> MIMBatch:
        """Moved to ``device``; the two image tensors also cast to ``dtype`` when given."""
        return MIMBatch(
            images=to_device(self.images, device, dtype),
            tokenizer_images=to_device(self.tokenizer_images, device, dtype),
            bool_masked_pos=to_device(self.bool_masked_pos, device),
            indices=to_device(self.indices, device),
            labels=to_device(self.labels, device),
        )

    def pin_memory(self) -> MIMBatch:
        """Page-locked copies (called by ``DataLoader(pin_memory=True)``)."""
        labels = self.labels.pin_memory() if self.labels is not None else None
        return MIMBatch(self.images.pin_memory(), self.tokenizer_images.pin_memory(),
                        self.bool_masked_pos.pin_memory(), self.indices.pin_memory(), labels)


@dataclass
class ClassBatch:
    """A fine-tuning / evaluation batch: ``images`` [B, 3, H, W], ``labels`` [B], ``indices`` [B]."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ClassBatch:
        return ClassBatch(
            to_device(self.images, device, dtype), to_device(self.labels, device), to_device(self.indices, device)
        )

    def pin_memory(self) -> ClassBatch:
        return ClassBatch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory())


def sample_labels(samples: Sequence[Sample]) -> torch.Tensor | None:
    """The samples' class labels ``[B]`` (int64), or None when any sample has none."""
    if any(s.label is None for s in samples):
        return None
    return torch.tensor([s.label for s in samples], dtype=torch.int64)


def batch_reads(samples: Sequence[Sample]) -> Reads:
    """What the samples of one batch read: the files loaded and every skipped read."""
    return Reads([s.image for s in samples if s.image >= 0], [skip for s in samples for skip in s.skips])


def collate_mim(samples: Sequence[Sample]) -> tuple[MIMBatch, Reads]:
    """Stack two-view samples with masks into a ``MIMBatch``; also return what they read."""
    batch = MIMBatch(
        images=torch.stack([s.views[0] for s in samples]),
        tokenizer_images=torch.stack([s.views[1] for s in samples]),
        bool_masked_pos=torch.from_numpy(np.stack([s.mask for s in samples if s.mask is not None])),
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        labels=sample_labels(samples),
    )
    return batch, batch_reads(samples)


def collate_classes(samples: Sequence[Sample]) -> tuple[ClassBatch, Reads]:
    """Stack labelled one-view samples into a ``ClassBatch``; also return what they read."""
    labels = sample_labels(samples)
    if labels is None:
        raise ValueError("collate_classes: every sample needs a label")
    images = torch.stack([s.views[0] for s in samples])
    indices = torch.tensor([s.index for s in samples], dtype=torch.int64)
    return ClassBatch(images, labels, indices), batch_reads(samples)
