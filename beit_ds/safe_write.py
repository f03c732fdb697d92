"""Writing a run's files without following links planted in its folder.

A run folder may come from someone else (copied, shared, unpacked). A symbolic link named like a
file the run writes (``recipe.yaml``, ``latest.json``, ``metrics.jsonl``, ``.run.lock``, an
export's ``model.safetensors``) would let the write truncate or overwrite whatever file it points
at. So a whole file is written into a new temporary file beside it (``O_EXCL``: never an existing
name) and renamed over the name: ``os.replace`` replaces a link itself, not its target. A file
that is appended to or locked in place is opened with ``O_NOFOLLOW`` and must be a regular file;
a folder the run makes must be a folder, not a link. A refusal is a one-line ``ConfigError``
naming the path.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from beit_ds.config import ConfigError

_REFUSED = {errno.ELOOP: "a symbolic link", errno.EISDIR: "a folder", errno.ENXIO: "a pipe or socket"}


def _refusal(path: Path, what: str, expected: str) -> ConfigError:
    return ConfigError(f"{path}: {what}, expected {expected} (a run's files are never written through"
                       " links or into special files; remove it)")


def open_regular(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """A descriptor of the regular file ``path`` opened with ``flags`` (plus ``O_NOFOLLOW`` and
    ``O_CLOEXEC``); a one-line ``ConfigError`` when ``path`` is a link, a folder, a pipe or a
    device. Other ``OSError``s (permissions, a full disk) pass through."""
    path = Path(path)
    try:  # O_NONBLOCK: a planted pipe must not block the open; cleared below for the regular file
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as err:
        if err.errno in _REFUSED:
            raise _refusal(path, _REFUSED[err.errno], "a regular file") from None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = "a pipe or socket" if stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind) else "a device"
        raise _refusal(path, what, "a regular file")
    os.set_blocking(fd, True)
    return fd


def open_append(path: str | Path) -> TextIO:
    """``path`` opened for appending text, line-buffered (created if missing), never through a link."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", buffering=1)


def make_dir(path: str | Path, link_ok: bool = False) -> Path:
    """``path`` as a folder, made with its parents if missing; a one-line ``ConfigError`` when it
    is a file, or a symbolic link (unless ``link_ok``: a folder a user named, which may be a link
    to a larger disk)."""
    path = Path(path)
    if path.is_symlink() and not (link_ok and path.is_dir()):
        raise _refusal(path, "a symbolic link", "a folder")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder; expected a folder or a new name")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A new temporary path beside ``path`` for the block to write; renamed over ``path`` (a link
    there is replaced, its target untouched) once the block ends without error, after an
    ``fsync``. On error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = open_regular(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``data`` as the whole content of ``path``, replaced atomically, never through a link."""
    with replacing(path) as tmp:
        fd = open_regular(tmp, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) as the whole content of ``path``, replaced atomically, never through a link."""
    return write_bytes(path, text.encode())
