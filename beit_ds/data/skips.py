"""Bad input never crashes a run and is never lost silently.

An image that cannot be used raises ``SkipSample(reason)`` where it is read or decoded; the dataset
counts it, loads a substitute instead, and the loader gathers every skip into a ``SkipReport``
(distinct files and reads per reason, the first few paths) that the engine logs. ``DataError`` is
the one-line error for problems that stop a run: a missing data path, an unlabelled source used
for fine-tuning, a larger share of bad files than ``data.max_skip_fraction`` allows, or loader
workers that deliver nothing for ``data.timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Why an image was skipped; the report's keys.
REASONS = (
    "missing",  # the file does not exist
    "unreadable",  # cannot be read: I/O error, permissions, not a regular file (FIFO, device)
    "empty",  # zero bytes
    "not_an_image",  # not an image format PIL can identify
    "truncated",  # the encoded data ends early
    "corrupt",  # the decoder failed on broken data
    "too_large",  # more pixels than data.max_image_pixels (decompression bombs)
    "unsupported_mode",  # a pixel format we cannot turn into RGB
    "ignored",  # found while listing but not an image file (extension, hidden, FIFO, socket); never read
    "no_label",  # segmentation: an image whose label map the listing did not find; never read
    "label_size",  # segmentation: a label map whose size differs from its image's
)

EXAMPLES_PER_REASON = 5


class DataError(ValueError):
    """A data problem that stops the run; the message is one line naming the path or key."""


class SkipSample(Exception):
    """Raised while reading or decoding one image: ``reason`` (one of ``REASONS``) and a detail;
    ``path``: the file to report when it is not the sample's image (a segmentation label map)."""

    def __init__(self, reason: str, detail: str = "", path: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.path = path


@dataclass
class SkipReport:
    """Skipped files per reason, the first ``EXAMPLES_PER_REASON`` paths of each, and loaded count.

    ``counts`` are *distinct* files: a bad file read again in a later epoch, a later repeat or as
    another sample's substitute is counted once (a file is named by its index in the source's
    table, or by its path). ``reads`` keeps the skipped reads per reason, every time. ``files`` is
    the distinct files read so far, good or bad, the denominator of ``skip_fraction``; ``loaded``
    the images delivered (reads). ``ignored`` files (found while listing, never read) are counted
    but never part of ``skipped`` or ``files``.
    """

    counts: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    loaded: int = 0
    files: int = 0
    _bad: dict[str, set[int | str]] = field(default_factory=dict, repr=False)
    _bad_any: set[int | str] = field(default_factory=set, repr=False)
    _good: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool), repr=False)

    def add(self, reason: str, path: str, file: int | None = None) -> None:
        """One skipped read of ``path`` (``file``: its table index, the identity when given)."""
        key: int | str = path if file is None else int(file)
        self.reads[reason] = self.reads.get(reason, 0) + 1
        seen = self._bad.setdefault(reason, set())
        if key not in seen:
            seen.add(key)
            self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason != "ignored" and key not in self._bad_any:
            self._bad_any.add(key)
            self.files += 0 if self._is_good(key) else 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON and path not in shown:
            shown.append(path)

    def extend(self, skips: Iterable[Sequence[Any]]) -> None:
        """``(reason, path)`` or ``(reason, path, file)`` per skipped read."""
        for skip in skips:
            self.add(*skip)

    def mark_loaded(self, files: Sequence[int]) -> None:
        """Images delivered, by table index (a file loaded again is not a new file)."""
        self.loaded += len(files)
        if not len(files):
            return
        index = np.asarray(files, dtype=np.int64)
        if int(index.max()) >= len(self._good):
            grown = np.zeros(max(int(index.max()) + 1, 2 * len(self._good)), dtype=bool)
            grown[: len(self._good)] = self._good
            self._good = grown
        new = np.unique(index[~self._good[index]])
        self._good[new] = True
        self.files += sum(int(i) not in self._bad_any for i in new)

    def _is_good(self, key: int | str) -> bool:
        return isinstance(key, int) and key < len(self._good) and bool(self._good[key])

    @property
    def skipped(self) -> int:
        """Distinct files skipped, not counting files that listing ``ignored``."""
        return len(self._bad_any)

    @property
    def skipped_reads(self) -> int:
        """Skipped reads (a bad file read in several epochs counts each time), not ``ignored``."""
        return sum(n for reason, n in self.reads.items() if reason != "ignored")

    @property
    def skip_fraction(self) -> float:
        """The share of bad files among the distinct files read so far."""
        return self.skipped / self.files if self.files else 0.0

    def summary(self) -> str:
        """One line: ``loaded 120, skipped 3 distinct files in 7 reads: corrupt 2 (a.jpg, b.jpg); empty
        1 (c.jpg)`` (``skipped 3`` when each was read once); counts per reason are distinct files."""
        parts = [f"{r} {self.counts[r]} ({', '.join(self.examples.get(r, []))})" for r in sorted(self.counts)]
        head = f"loaded {self.loaded}, skipped {self.skipped}"
        if self.skipped_reads != self.skipped:
            head += f" distinct files in {self.skipped_reads} reads"
        return head + (": " + "; ".join(parts) if parts else "")

    def as_metrics(self) -> dict[str, float]:
        """Scalars for the metric writer: ``data_skipped`` and ``data_skipped_<reason>`` (distinct
        files), ``data_skipped_reads`` (reads) and ``data_skip_fraction``."""
        out = {"data_skipped": float(self.skipped), "data_skipped_reads": float(self.skipped_reads)}
        out["data_skip_fraction"] = self.skip_fraction
        out.update({f"data_skipped_{r}": float(n) for r, n in self.counts.items()})
        return out
