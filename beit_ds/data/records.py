"""The sample table every source turns into.

``Records`` holds, for N images, where the encoded bytes are (a file relative to ``root``, or
``offset``/``size`` inside one of ``containers``, the tar shards) and the optional integer label,
all in flat numpy arrays: 14M ImageNet-22K paths as Python strings would cost gigabytes per loader
worker once reference counting touches the forked pages. Folder trees and file lists are turned
into records here; tar shards and archives in ``shards.py``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beit_ds.data.skips import DataError, SkipSample

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class StringTable:
    """N strings packed into one UTF-8 byte array ``blob`` and ``offsets`` [N + 1] (int64)."""

    blob: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> StringTable:
        encoded = [s.encode() for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()


@dataclass(frozen=True)
class Records:
    """N images of one source: ``keys`` (paths relative to ``root`` or member names), labels.

    ``labels`` [N] int64 with ``classes`` naming each label, or both ``None`` (unlabelled).
    Container sources also have ``containers`` (tar paths) and ``container_ids`` [N] int32,
    ``offsets`` [N] int64, ``sizes`` [N] int64 locating each image's bytes. ``ignored``: files seen
    while listing that are not images (reported, never read).
    """

    name: str
    root: str
    keys: StringTable
    labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    containers: tuple[str, ...] = ()
    container_ids: np.ndarray | None = None
    offsets: np.ndarray | None = None
    sizes: np.ndarray | None = None
    ignored: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def class_counts(self) -> list[int]:
        """Images per class, in ``classes`` order; ``[]`` for an unlabelled source."""
        if self.labels is None or self.classes is None:
            return []
        return np.bincount(self.labels, minlength=len(self.classes)).tolist()

    def location(self, i: int) -> str:
        """Where image ``i`` lives, for reports: a path, or ``shard.tar:member``."""
        if self.container_ids is None:
            return os.path.join(self.root, self.keys[i])
        return f"{self.containers[int(self.container_ids[i])]}:{self.keys[i]}"

    def require_labels(self, purpose: str) -> None:
        if not self.labelled:
            raise DataError(
                f"{self.name}: the source has no labels but {purpose} needs them (use a class-per-folder"
                " tree, a file list with 'path,label' lines or shards with .cls members)"
            )


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def split_listing(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(image names, ignored names): hidden files and non-image extensions are ignored."""
    images: list[str] = []
    ignored: list[str] = []
    for name in names:
        hidden = any(part.startswith(".") for part in Path(name).parts)
        (images if is_image_name(name) and not hidden else ignored).append(name)
    return images, ignored


def labels_from_folders(
    relpaths: Sequence[str], classes: Sequence[str] | None = None
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """ImageFolder labels: class = first folder of each relative path, classes sorted by name.

    Unlabelled (``None, None``) when any image sits directly at the top. With ``classes`` given
    (an evaluation set labelled like its training set) every folder must be one of them.
    """
    if not relpaths or any(len(Path(p).parts) < 2 for p in relpaths):
        return None, None
    firsts = [Path(p).parts[0] for p in relpaths]
    names = tuple(classes) if classes is not None else tuple(sorted(set(firsts)))
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(firsts) - set(lookup))
    if unknown:
        raise DataError(f"class folders {unknown[:5]} are not among the {len(names)} training classes")
    return np.array([lookup[f] for f in firsts], dtype=np.int64), names


def walk_tree(root: Path) -> tuple[list[str], list[str], int]:
    """(regular files, other entries, directory links not followed) under ``root``, as relative
    paths in ``os.walk`` order (a folder's files sorted, then its sub-folders sorted, recursively).

    Every real directory is listed once, so symlink loops end: a directory link pointing inside
    the tree is not followed (its images are listed under their real path, which a walk of real
    folders reaches anyway), one pointing outside is followed unless that directory, by
    (``st_dev``, ``st_ino``), was listed already. Only regular files (or links to one) are
    candidates; FIFOs, sockets, devices and dangling links are "other" and never opened.
    """
    inside = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()
    files: list[str] = []
    others: list[str] = []
    links_skipped = 0
    stack = [("", str(root))]
    while stack:
        rel, path = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in visited:
            links_skipped += 1
            continue
        visited.add((st.st_dev, st.st_ino))
        subdirs = []
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            others.append(rel or ".")
            continue
        for entry in entries:
            name = os.path.join(rel, entry.name) if rel else entry.name
            try:
                if entry.is_dir():  # follows links
                    real = os.path.realpath(entry.path)
                    if entry.is_symlink() and os.path.commonpath([real, inside]) == inside:
                        links_skipped += 1
                    else:
                        subdirs.append((name, entry.path))
                elif entry.is_file():  # a regular file, or a link to one
                    files.append(name)
                else:
                    others.append(name)
            except OSError:
                others.append(name)
        stack.extend(reversed(subdirs))
    return files, others, links_skipped


def folder_records(
    name: str, root: Path, classes: Sequence[str] | None = None, ignored: Sequence[str] = ()
) -> Records:
    """Every image under ``root`` (sorted, recursive, each real file once); ImageFolder labels when
    every image has one. Non-image, hidden and non-regular files are ``ignored``."""
    if not root.is_dir():
        raise DataError(f"{name}: {root} is not a folder")
    names, others, links_skipped = walk_tree(root)
    if links_skipped:
        log.info("%s: %d directory links not followed (inside the tree, or a loop)", name, links_skipped)
    images, skipped = split_listing(names)
    if not images:
        raise DataError(f"{name}: no image files under {root} ({len(names) + len(others)} other files)")
    labels, class_names = labels_from_folders(images, classes)
    keys = StringTable.from_strings(images)
    ignored = tuple(ignored) + tuple(skipped) + tuple(others)
    return Records(name, str(root), keys, labels, class_names, ignored=ignored)


def _parse_line(line: str, where: str) -> tuple[str, str | None]:
    path, sep, label = line.rpartition(",")
    if not sep:
        return line, None
    if not path.strip() or not label.strip():
        raise DataError(f"{where}: expected 'path' or 'path,label', got {line!r}")
    return path.strip(), label.strip()


def _list_labels(
    raw: list[str | None], lines: list[int], list_file: Path, classes: Sequence[str] | None
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Integer labels (``classes`` = their decimal names) or class names mapped to sorted indices."""
    given = [r for r in raw if r is not None]
    if not given:
        return None, None
    if len(given) < len(raw):
        line = lines[raw.index(None)]
        raise DataError(f"{list_file}:{line}: no label, but other lines have one (expected 'path,label')")
    if classes is None and all(r.isdigit() for r in given):
        labels = np.array([int(r) for r in given], dtype=np.int64)
        return labels, tuple(str(i) for i in range(int(labels.max()) + 1))
    names = tuple(classes) if classes is not None else tuple(sorted(set(given)))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({r for r in given if r not in lookup})
    if unknown:
        raise DataError(f"{list_file}: labels {unknown[:5]} are not among the {len(names)} training classes")
    return np.array([lookup[r] for r in given], dtype=np.int64), names


def filelist_records(list_file: Path, check_files: int, classes: Sequence[str] | None = None) -> Records:
    """Images named by ``list_file`` (``path[,label]`` per line, ``#`` comments, relative paths
    resolved against the list's folder); ``check_files`` entries, spread over the list, must exist."""
    if not list_file.is_file():
        raise DataError(f"data.path={str(list_file)!r}: file list not found")
    paths: list[str] = []
    raw: list[str | None] = []
    lines: list[int] = []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            path, label = _parse_line(line, f"{list_file}:{n}")
            paths.append(path)
            raw.append(label)
            lines.append(n)
    if not paths:
        raise DataError(f"data.path={str(list_file)!r}: the file list names no images")
    labels, class_names = _list_labels(raw, lines, list_file, classes)
    root = list_file.resolve().parent
    _check_exists(list_file, root, paths, check_files)
    return Records(str(list_file), str(root), StringTable.from_strings(paths), labels, class_names)


def _check_exists(list_file: Path, root: Path, paths: Sequence[str], count: int) -> None:
    """A missing-file check on ``count`` entries spread over the list (all of a short list)."""
    if count == 0:
        return
    picks = np.unique(np.linspace(0, len(paths) - 1, num=min(count, len(paths))).astype(np.int64))
    missing = [paths[i] for i in picks if not (root / paths[i]).exists()]  # a FIFO is skipped later
    if missing:
        raise DataError(
            f"{list_file}: {len(missing)} of {len(picks)} checked entries do not exist, e.g."
            f" {', '.join(missing[:3])} (relative paths are resolved against {root})"
        )


class ByteReader:
    """Image ``i``'s encoded bytes: a file read, or one ``pread`` from its tar container.

    Containers are opened lazily in each process (loader workers are forked) and at most
    ``max_open`` stay open, so thousands of shards never exhaust file descriptors.
    """

    def __init__(self, records: Records, max_open: int = 64) -> None:
        self.records = records
        self.max_open = max_open
        self._fds: dict[int, int] = {}
        self._pid = -1

    def __call__(self, i: int) -> bytes:
        r = self.records
        if r.container_ids is None or r.offsets is None or r.sizes is None:
            return self._read_file(os.path.join(r.root, r.keys[i]))
        cid, size = int(r.container_ids[i]), int(r.sizes[i])
        try:
            data = os.pread(self._fd(cid), size, int(r.offsets[i]))
        except OSError as err:
            raise SkipSample("unreadable", f"{r.location(i)}: {err}") from err
        if len(data) != size:
            raise SkipSample("truncated", f"{r.location(i)}: shard ends early")
        return data

    @staticmethod
    def _read_file(path: str) -> bytes:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise SkipSample("missing", path) from err
        except OSError as err:
            raise SkipSample("unreadable", f"{path}: {err}") from err
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise SkipSample("unreadable", f"{path}: not a regular file ({_file_kind(mode)})")
            try:
                return f.read()
            except OSError as err:
                raise SkipSample("unreadable", f"{path}: {err}") from err

    def _fd(self, cid: int) -> int:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours to use
            self._fds, self._pid = {}, os.getpid()
        if cid not in self._fds:
            if len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[cid] = os.open(self.records.containers[cid], os.O_RDONLY | os.O_NONBLOCK)
        return self._fds[cid]


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((kind for test, kind in kinds if test(mode)), "socket" if stat.S_ISSOCK(mode) else "folder")
