"""Bad input never crashes a run and is never lost silently (issue 4, "Robustness").

An image that cannot be used raises ``SkipSample(reason)`` where it is read or decoded; the dataset
counts it, loads a substitute instead, and the loader gathers every skip into a ``SkipReport``
(counts per reason + the first few paths) that the engine logs. ``DataError`` is the one-line error
for problems that stop a run: a missing data path, an unlabelled source used for fine-tuning, or
more skipped reads than ``data.max_skip_fraction`` allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# Why an image was skipped; the report's keys.
REASONS = (
    "missing",  # the file does not exist
    "unreadable",  # the file or shard member cannot be read (I/O error, permissions)
    "empty",  # zero bytes
    "not_an_image",  # not an image format PIL can identify
    "truncated",  # the encoded data ends early
    "corrupt",  # the decoder failed on broken data
    "too_large",  # more pixels than data.max_image_pixels (decompression bombs)
    "unsupported_mode",  # a pixel format we cannot turn into RGB
    "ignored",  # found while listing but not an image file (extension, hidden file); never read
)

EXAMPLES_PER_REASON = 5


class DataError(ValueError):
    """A data problem that stops the run; the message is one line naming the path or key."""


class SkipSample(Exception):
    """Raised while reading or decoding one image: ``reason`` (one of ``REASONS``) and a detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class SkipReport:
    """Skipped reads per reason, the first ``EXAMPLES_PER_REASON`` paths of each, and loaded count."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    loaded: int = 0

    def add(self, reason: str, path: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON and path not in shown:
            shown.append(path)

    def extend(self, skips: Iterable[tuple[str, str]]) -> None:
        for reason, path in skips:
            self.add(reason, path)

    @property
    def skipped(self) -> int:
        """Skipped reads, not counting files that listing ``ignored``."""
        return sum(n for reason, n in self.counts.items() if reason != "ignored")

    @property
    def skip_fraction(self) -> float:
        reads = self.skipped + self.loaded
        return self.skipped / reads if reads else 0.0

    def summary(self) -> str:
        """One line: ``loaded 120, skipped 3: corrupt 2 (a.jpg, b.jpg); empty 1 (c.jpg)``."""
        parts = [f"{r} {self.counts[r]} ({', '.join(self.examples.get(r, []))})" for r in sorted(self.counts)]
        return f"loaded {self.loaded}, skipped {self.skipped}" + (": " + "; ".join(parts) if parts else "")

    def as_metrics(self) -> dict[str, float]:
        """Scalars for the metric writer: ``data_skipped`` and ``data_skipped_<reason>``."""
        out = {"data_skipped": float(self.skipped)}
        out.update({f"data_skipped_{r}": float(n) for r, n in self.counts.items()})
        return out
