"""``ResumableLoader``: a DataLoader for one rank and one epoch that knows its global position.

It yields typed batches, gathers what worker processes read into one ``SkipReport`` (shared by
the loaders of later epochs made with ``at``), stops with ``DataError`` once more than
``data.max_skip_fraction`` of the distinct files read were bad, and reports ``state_dict()`` =
(epoch, position): the samples of the epoch's global order consumed by all ranks,
``start + batches · B · W``. The position counts batches handed to the training loop, not those
prefetched by workers, so a checkpoint taken between two steps resumes exactly.

Worker processes (``workers.py``) ignore the preemption signals, so that ``scancel`` — SIGTERM to
the whole process group — leaves shutdown to the training process. A ``DataError`` raised in a
worker reaches the caller as the same one-line ``DataError``; workers that deliver nothing for
``data.timeout`` seconds (a hung read) are a one-line ``DataError`` too, never a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import torch
from torch.utils.data import DataLoader, Dataset

from beit_ds.data.records import Records
from beit_ds.data.sampler import ResumableDistributedSampler
from beit_ds.data.skips import DataError, SkipReport
from beit_ds.data.workers import WorkerGroup, worker_data_error

SKIP_CHECK_AFTER = 64  # distinct files before data.max_skip_fraction is enforced (one bad file is no trend)


class LoaderDataset(Protocol):
    """What the loader needs of a dataset (``ImageDataset``, ``SegDataset``): a length, samples
    by ``(epoch, index)`` key, the table ``records`` and the files its listing skipped."""

    records: Records

    def __len__(self) -> int: ...

    def __getitem__(self, key: tuple[int, int]) -> Any: ...

    def listing_skips(self) -> list[tuple[str, str]]: ...


class LoaderSettings(Protocol):
    """The loader keys of a data section (``DataConfig``, ``SegDataConfig``)."""

    num_workers: int
    pin_memory: bool
    prefetch_factor: int
    max_skip_fraction: float
    timeout: float


@dataclass(frozen=True)
class LoaderPlace:
    """Where a loader stands: this rank of ``world_size``, per-rank ``batch_size``, seed and position."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    start_sample: int = 0


class ResumableLoader:
    """Batches of ``dataset`` for ``place``; ``train`` = shuffled, equal batch counts on every rank.

    ``collate`` stacks a list of samples into (batch, ``Reads``); ``cfg`` is the data section.
    """

    def __init__(
        self,
        dataset: LoaderDataset,
        collate: Callable[[Sequence[Any]], tuple[Any, Any]],
        place: LoaderPlace,
        cfg: LoaderSettings,
        train: bool,
        report: SkipReport | None = None,
    ) -> None:
        self.dataset, self.collate, self.place, self.cfg, self.train = dataset, collate, place, cfg, train
        if report is None:
            report = SkipReport()
            for reason, path in dataset.listing_skips():
                report.add(reason, path)
        self.report = report
        self.sampler = ResumableDistributedSampler(
            num_samples=len(dataset),
            rank=place.rank,
            world_size=place.world_size,
            seed=place.seed,
            epoch=place.epoch,
            start_sample=place.start_sample,
            shuffle=train,
            drop_last=train,
        )
        self._batches = 0
        self.workers: WorkerGroup | None = None  # the worker processes of the running iteration

    @property
    def num_samples(self) -> int:
        """Samples in one epoch over all ranks (images × ``data.repeats`` for training)."""
        return len(self.dataset)

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.dataset.records.classes

    def class_counts(self) -> list[int]:
        return self.dataset.records.class_counts()

    def __len__(self) -> int:
        b = self.place.batch_size
        n = len(self.sampler)
        return n // b if self.train else (n + b - 1) // b

    def at(self, epoch: int, start_sample: int = 0) -> ResumableLoader:
        """The loader of ``epoch`` from ``start_sample``: same dataset, same skip report."""
        place = replace(self.place, epoch=epoch, start_sample=start_sample)
        return ResumableLoader(self.dataset, self.collate, place, self.cfg, self.train, self.report)

    def state_dict(self) -> dict[str, int]:
        """``epoch`` and ``position``: samples of the epoch consumed by all ranks so far."""
        consumed = self._batches * self.place.batch_size * self.place.world_size
        return {"epoch": self.place.epoch, "position": self.place.start_sample + consumed}

    def _data_loader(self, group: WorkerGroup | None) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            cast(Dataset, self.dataset),  # any LoaderDataset is a map-style dataset
            batch_size=self.place.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            drop_last=self.train,
            prefetch_factor=self.cfg.prefetch_factor if workers > 0 else None,
            worker_init_fn=group.init_worker if group is not None else None,
            timeout=float(self.cfg.timeout) if workers > 0 else 0.0,
            # DataLoader draws its workers' base seed from this generator; without one it would
            # consume the global torch RNG and shift drop-path draws after a resume.
            generator=torch.Generator().manual_seed(self.place.seed * 100_003 + self.place.epoch),
        )

    def __iter__(self) -> Iterator[Any]:
        """The epoch's batches; the workers start now. Ending, closing or dropping the iteration
        ends them."""
        self._batches = 0
        group = self.workers = WorkerGroup() if self.cfg.num_workers > 0 else None
        with group.starting() if group is not None else nullcontext():  # pids known before they run
            batches = iter(self._data_loader(group))
        return self._epoch(batches, group)

    def _epoch(self, batches: Iterator[Any] | None, group: WorkerGroup | None) -> Iterator[Any]:
        try:
            while batches is not None:
                batch, failure = self._next(batches)
                if failure is not None:
                    raise failure
                if batch is None:
                    break
                self._batches += 1
                yield batch
            failure = self._skip_error(final=True)
            if failure is not None:
                raise failure
        finally:
            # dropping torch's iterator shuts its workers down; those that ignore its SIGTERM (stuck
            # in a read, or never told because the iterator was collected in a reference cycle)
            # are killed, so that no worker outlives its iteration and blocks the interpreter's exit
            batches = None
            if group is not None:
                group.kill_stuck()

    def _next(self, batches: Iterator[Any]) -> tuple[Any, DataError | None]:
        """(the next batch or None at the end, the error to stop with)."""
        try:
            batch, reads = next(batches)
        except StopIteration:
            return None, None
        except DataError as err:
            failure = worker_data_error(err)
            if failure is not err:  # torch's copy, whose traceback holds the iterator in a cycle
                err.__traceback__ = None
            return None, failure
        except RuntimeError as err:
            if not str(err).startswith("DataLoader timed out"):
                raise
            return None, self._timeout_error()
        self.report.extend(reads.skips)
        self.report.mark_loaded(reads.loaded)
        return batch, self._skip_error(final=False)

    def _timeout_error(self) -> DataError:
        t = self.cfg.timeout
        return DataError(
            f"data.timeout={t}: the loader workers delivered no batch for {t} s (a read that hangs:"
            " a stalled network file system, a device or FIFO?); raise data.timeout, or 0 to wait forever"
        )

    def _skip_error(self, final: bool) -> DataError | None:
        """The error to stop with when more than ``data.max_skip_fraction`` of the files were bad."""
        report, limit = self.report, self.cfg.max_skip_fraction
        if limit >= 1 or (report.files < SKIP_CHECK_AFTER and not final) or report.skip_fraction <= limit:
            return None
        return DataError(
            f"data.max_skip_fraction={limit}: {report.skipped} of {report.files} distinct files read were"
            f" bad ({report.skip_fraction:.1%}); {report.summary()}"
        )
