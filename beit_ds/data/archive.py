"""Compressed archives (``.tar.gz`` / ``.tgz`` / ``.tar.bz2`` / ``.tar.xz``) extracted once to a cache.

A gzip stream cannot be read at an offset, so a compressed archive is unpacked once into
``<cache>/<stem>-<hash>/`` where the hash covers the archive's absolute path, size and mtime (a
changed archive gets a fresh folder). Every rank of every job calls ``extracted_folder``: the first
takes an exclusive ``flock`` on ``<folder>.lock`` and extracts into a temporary sibling, renamed into
place only when complete; the others wait on the lock and then find the finished folder. A crash
leaves at most a temporary folder, removed by the next extraction. Uncompressed ``.tar`` files are
not extracted: ``shards.tar_archive_records`` reads them in place.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tarfile
from pathlib import Path

from beit_ds.data.skips import DataError

COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CACHE_ENV = "BEIT_DS_CACHE"

log = logging.getLogger(__name__)


def is_compressed_archive(path: Path) -> bool:
    return path.name.lower().endswith(COMPRESSED_SUFFIXES)


def default_cache_dir() -> Path:
    """``$BEIT_DS_CACHE`` or ``~/.cache/beit_ds``, with ``archives/`` below it."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "beit_ds")
    return Path(base) / "archives"


def cache_key(archive: Path) -> str:
    """``<stem>-<16 hex>`` from the archive's absolute path, size and modification time."""
    stat = archive.stat()
    digest = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    stem = archive.name
    for suffix in COMPRESSED_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return f"{stem}-{digest[:16]}"


def extracted_folder(archive: Path, cache_dir: Path | None = None) -> Path:
    """The folder holding ``archive``'s extracted tree, extracting it first if needed."""
    if not archive.is_file():
        raise DataError(f"data.path={str(archive)!r}: archive not found")
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache_dir={str(cache)!r}: cannot create the cache folder ({err})") from err
    target = cache / cache_key(archive)
    if target.is_dir():
        return target
    with open(cache / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.is_dir():
            _extract(archive, target)
    return target


def _extract(archive: Path, target: Path) -> None:
    for stale in target.parent.glob(f"{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f"{target.name}.tmp-{os.getpid()}"
    log.info("extracting %s into %s (once)", archive, target)
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # no absolute paths, links out of tmp, or devices
            else:  # Python < 3.10.12 / 3.11.4: no extraction filters; refuse unsafe names ourselves
                _check_member_names(tar, archive)
                tar.extractall(tmp)
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"data.path={str(archive)!r}: cannot extract the archive ({err})") from err
    os.rename(tmp, target)


def _check_member_names(tar: tarfile.TarFile, archive: Path) -> None:
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if Path(member.name).is_absolute() or ".." in parts or member.issym() or member.islnk():
            raise DataError(
                f"data.path={str(archive)!r}: unsafe member {member.name!r} (absolute, '..' or link)"
            )
