"""Compressed archives (``.tar.gz`` / ``.tgz`` / ``.tar.bz2`` / ``.tar.xz``) extracted once to a cache.

A gzip stream cannot be read at an offset, so a compressed archive is unpacked once into
``<cache>/<stem>-<hash>/`` where the hash covers the archive's absolute path, size and mtime (a
changed archive gets a fresh folder). Every rank of every job calls ``extracted_folder``: the first
takes an exclusive ``flock`` on ``<folder>.lock`` and extracts into a temporary sibling, renamed into
place only when complete; the others wait on the lock and then find the finished folder. A crash
leaves at most a temporary folder, removed by the next extraction. Only regular files and folders
are extracted, member by member: a link (symbolic or hard), a device or pipe, an absolute path or a
name that lands outside the folder ends the extraction with one line naming the member. Uncompressed
``.tar`` files are not extracted: ``shards.tar_archive_records`` reads them in place.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import tarfile
from pathlib import Path

from beit_ds.data.skips import DataError
from beit_ds.safe_write import open_regular

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
    lock = open_regular(cache / f"{target.name}.lock", os.O_RDWR | os.O_CREAT)  # never through a link
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.is_dir():
            _extract(archive, target)
    finally:
        os.close(lock)
    return target


def _extract(archive: Path, target: Path) -> None:
    for stale in target.parent.glob(f"{target.name}.tmp-*"):
        if stale.is_symlink():
            stale.unlink()
        else:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)  # a new folder: fails rather than follow a link planted under that name
    log.info("extracting %s into %s (once)", archive, target)
    try:
        _extract_members(archive, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, target)


def _extract_members(archive: Path, root: Path) -> None:
    """Every member of ``archive`` into ``root``, each checked before it is written (one pass)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(member, archive, root)
                if hasattr(tarfile, "data_filter"):  # the standard library's checks as well (3.10.12+, 3.11.4+)
                    tar.extract(member, root, set_attrs=False, filter="data")
                else:
                    tar.extract(member, root, set_attrs=False)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"data.path={str(archive)!r}: cannot extract the archive ({err})") from err


def _check_member(member: tarfile.TarInfo, archive: Path, root: Path) -> None:
    """A one-line ``DataError`` unless ``member`` is a regular file or folder that lands inside
    ``root``. Links are refused whatever their target: an image archive needs none, and chains of
    them defeat the ``data`` filter of Pythons before the CVE-2025-4517 fix."""
    if member.issym() or member.islnk():
        why = "a symbolic link" if member.issym() else "a hard link"
    elif not (member.isfile() or member.isdir()):
        why = "a device or pipe"
    elif os.path.isabs(member.name):
        why = "an absolute path"
    else:
        real_root = os.path.realpath(root)
        inside = os.path.commonpath([real_root, os.path.realpath(os.path.join(real_root, member.name))])
        why = "" if inside == real_root else "outside the archive's folder"
    if why:
        raise DataError(f"data.path={str(archive)!r}: member {member.name!r} is {why};"
                        " an image archive holds regular files and folders only")
