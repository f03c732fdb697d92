"""Tar shards (WebDataset layout) and plain ``.tar`` archives, read in place by byte offset.

A shard folder holds ``shard-000000.tar`` … with members ``<key>.<image ext>`` and, when labelled,
``<key>.cls`` (the decimal label), plus ``index.npz``: every image's shard, data offset, size, key
and label, and the class names, so that a start needs no scan and any image is one ``pread`` away.
Reading by offset makes shards a packing format only (few inodes, large sequential files): the
sampler still shuffles and splits individual images, so ranks and workers never read the same
image, whatever the shard count. Shards without an index (written by other tools) are scanned on
start; ``launch/make_shards.py --index-only`` writes the index once. A plain ``.tar`` holding a
folder tree (``../shared/datasets`` style) is scanned the same way and labelled like a folder.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beit_ds.data.records import (
    IMAGE_EXTENSIONS,
    ByteReader,
    Records,
    StringTable,
    labels_from_folders,
    split_listing,
)
from beit_ds.data.skips import DataError, SkipReport, SkipSample

INDEX_NAME = "index.npz"
INDEX_FORMAT = "beit_ds-shards/1"


@dataclass(frozen=True)
class TarMember:
    """A regular file inside a tar: its name and where its bytes are."""

    name: str
    offset: int
    size: int


def scan_tar(path: Path) -> list[TarMember]:
    """Every regular file of an uncompressed tar (headers only; the data is not read)."""
    try:
        with tarfile.open(path, "r:") as tar:
            return [TarMember(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    except tarfile.ReadError as err:
        raise DataError(
            f"{path}: not an uncompressed tar file ({err}); compressed archives are extracted"
        ) from err
    except OSError as err:
        raise DataError(f"{path}: cannot read the shard ({err})") from err


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset naming: ``dir/key.ext.more`` → (``dir/key``, ``ext.more``)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _read_label(path: Path, member: TarMember) -> int:
    with open(path, "rb") as f:
        f.seek(member.offset)
        text = f.read(member.size).decode(errors="replace").strip()
    if not text.isdigit():
        raise DataError(f"{path}:{member.name}: expected a non-negative integer label, got {text!r}")
    return int(text)


def _shard_samples(path: Path) -> tuple[list[TarMember], list[int | None], list[str]]:
    """(image members, labels from ``.cls`` or None, ignored member names) of one shard."""
    groups: dict[str, dict[str, TarMember]] = {}
    for member in scan_tar(path):
        key, ext = _split_key(member.name)
        groups.setdefault(key, {})[ext] = member
    images: list[TarMember] = []
    labels: list[int | None] = []
    ignored: list[str] = []
    for parts in groups.values():
        image = next((m for ext, m in parts.items() if f".{ext}" in IMAGE_EXTENSIONS), None)
        if image is None:
            ignored.extend(f"{path.name}:{m.name}" for m in parts.values())
            continue
        images.append(image)
        labels.append(_read_label(path, parts["cls"]) if "cls" in parts else None)
    return images, labels, ignored


def scan_shards(folder: Path) -> Records:
    """Records of every ``*.tar`` shard in ``folder`` (sorted by name), found by scanning."""
    shards = sorted(p for p in folder.glob("*.tar") if p.is_file())  # never open a FIFO
    if not shards:
        raise DataError(f"data.path={str(folder)!r}: no *.tar shards and no {INDEX_NAME}")
    members, labels, ids, ignored = [], [], [], []
    for i, shard in enumerate(shards):
        m, lab, ign = _shard_samples(shard)
        members += m
        labels += lab
        ids += [i] * len(m)
        ignored += ign
    if not members:
        raise DataError(f"data.path={str(folder)!r}: the shards hold no images")
    label_array = np.array(labels, dtype=np.int64) if all(lab is not None for lab in labels) else None
    classes = tuple(str(c) for c in range(int(label_array.max()) + 1)) if label_array is not None else None
    return _tar_records(
        str(folder), tuple(str(s) for s in shards), members, ids, label_array, classes, ignored
    )


def write_index(records: Records, folder: Path) -> Path:
    """Save ``records`` of the shards in ``folder`` as ``index.npz`` (atomically)."""
    arrays = {
        "format": np.array(INDEX_FORMAT),
        "containers": np.array([Path(c).name for c in records.containers]),
        "container_ids": records.container_ids,
        "offsets": records.offsets,
        "sizes": records.sizes,
        "key_blob": records.keys.blob,
        "key_offsets": records.keys.offsets,
    }
    if records.labels is not None and records.classes is not None:
        arrays.update(labels=records.labels, classes=np.array(records.classes))
    tmp = folder / f".{INDEX_NAME}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None})  # type: ignore[arg-type]  # numpy's stub
    os.replace(tmp, folder / INDEX_NAME)
    return folder / INDEX_NAME


def shard_records(folder: Path) -> Records:
    """Records of a shard folder: from its ``index.npz`` when present, else by scanning."""
    if not folder.is_dir():
        raise DataError(f"data.path={str(folder)!r}: shard folder not found")
    index = folder / INDEX_NAME
    if not index.is_file():
        return scan_shards(folder)
    with np.load(index, allow_pickle=False) as z:
        if str(z["format"]) != INDEX_FORMAT:
            raise DataError(f"{index}: format {str(z['format'])!r}, expected {INDEX_FORMAT!r}")
        containers = tuple(str(folder / str(name)) for name in z["containers"])
        unreadable = [c for c in containers if not os.access(c, os.R_OK)]
        if unreadable:
            raise DataError(f"{index}: {len(unreadable)} shards missing or unreadable, e.g. {unreadable[0]}")
        labelled = "labels" in z.files
        return Records(
            name=str(folder),
            root=str(folder),
            keys=StringTable(z["key_blob"], z["key_offsets"]),
            labels=z["labels"] if labelled else None,
            classes=tuple(str(c) for c in z["classes"]) if labelled else None,
            containers=containers,
            container_ids=z["container_ids"],
            offsets=z["offsets"],
            sizes=z["sizes"],
        )


def _tar_records(
    name: str,
    containers: tuple[str, ...],
    members: list[TarMember],
    container_ids: list[int],
    labels: np.ndarray | None,
    classes: tuple[str, ...] | None,
    ignored: Sequence[str],
) -> Records:
    return Records(
        name=name,
        root=name,
        keys=StringTable.from_strings([m.name for m in members]),
        labels=labels,
        classes=classes,
        containers=containers,
        container_ids=np.array(container_ids, dtype=np.int32),
        offsets=np.array([m.offset for m in members], dtype=np.int64),
        sizes=np.array([m.size for m in members], dtype=np.int64),
        ignored=tuple(ignored),
    )


def _relative(name: str, prefix: str) -> str | None:
    """``name`` below ``prefix`` (a leading ``./`` ignored), or None when it is elsewhere."""
    name = name[2:] if name.startswith("./") else name
    return name[len(prefix) :] if name.startswith(prefix) else None


def tar_archive_records(archive: Path, subdir: str, classes: Sequence[str] | None = None) -> Records:
    """Images of a plain ``.tar`` holding a folder tree, under ``subdir``, labelled like a folder."""
    prefix = subdir.strip("/") + "/" if subdir.strip("/") else ""
    relative = [(m, _relative(m.name, prefix)) for m in scan_tar(archive)]
    below = [(m, rel) for m, rel in relative if rel]
    images, ignored = split_listing([rel for _, rel in below])
    if not images:
        raise DataError(f"data.subdir={subdir!r}: no images under it in {archive} ({len(below)} other files)")
    keep = set(images)
    members = [m for m, rel in below if rel in keep]
    labels, names = labels_from_folders([rel for _, rel in below if rel in keep], classes)
    return _tar_records(str(archive), (str(archive),), members, [0] * len(members), labels, names, ignored)


class ShardWriter:
    """Appends samples to ``shard-NNNNNN.tar`` files of at most ``max_bytes`` / ``max_count``."""

    def __init__(self, out_dir: Path, max_bytes: int, max_count: int) -> None:
        self.out_dir, self.max_bytes, self.max_count = out_dir, max_bytes, max_count
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._bytes = self._count = 0

    def _roll(self, incoming: int) -> tarfile.TarFile:
        full = self._count >= self.max_count or self._bytes + incoming > self.max_bytes
        if self._tar is None or (full and self._count > 0):
            self.close()
            self.paths.append(self.out_dir / f"shard-{len(self.paths):06d}.tar")
            self._tar = tarfile.open(self.paths[-1].with_suffix(".tar.tmp"), "w", format=tarfile.GNU_FORMAT)
            self._bytes = self._count = 0
        return self._tar

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: ``{ext: data}`` written as ``key.ext`` members."""
        tar = self._roll(sum(len(d) + 1024 for d in members.values()))
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data) + 1024
        self._count += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self.paths[-1].with_suffix(".tar.tmp"), self.paths[-1])
            self._tar = None


def write_shards(
    records: Records,
    out_dir: Path,
    max_bytes: int,
    max_count: int,
    progress: Callable[[int], None] | None = None,
) -> SkipReport:
    """Copy every image of ``records`` (bytes untouched) into shards in ``out_dir``, then index them.

    Unreadable sources are skipped and returned in the report; ``progress(n)`` after each image.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("*.tar")):
        raise DataError(f"{out_dir}: already holds shards; write into an empty folder")
    reader, writer, report = ByteReader(records), ShardWriter(out_dir, max_bytes, max_count), SkipReport()
    for i in range(len(records)):
        try:
            data = reader(i)
        except SkipSample as skip:
            report.add(skip.reason, records.location(i), i)
        else:
            ext = Path(records.keys[i]).suffix.lower().lstrip(".") or "jpg"
            members = {ext: data}
            if records.labels is not None:
                members["cls"] = str(int(records.labels[i])).encode()
            writer.add(f"{i:09d}", members)
            report.mark_loaded([i])
        if progress is not None:
            progress(1)
    writer.close()
    written = scan_shards(out_dir)
    if records.classes is not None:
        written = _with_classes(written, records.classes)
    write_index(written, out_dir)
    return report


def _with_classes(records: Records, classes: tuple[str, ...]) -> Records:
    """``records`` naming its labels by the source's class names instead of their numbers."""
    return Records(**{**records.__dict__, "classes": classes})
