"""Is a checkpoint folder what was written, and can a run write one at all?

``COMPLETE.json`` lists every file of a checkpoint with its size and SHA-256. Sizes catch a
truncated copy; the digest also catches same-size damage (a flipped block, a bad disk sector).
Each rank hashes the files it wrote right after writing them (they are still in the page cache)
and rank 0 gathers the digests. Verification before a resume re-reads every file: SHA-256 ran at
1.0 GiB/s on one core of this project's CPU machine (``python bench/checkpoint_verify.py --mib
512``), i.e. 4.0 s for a BEiT-L ZeRO checkpoint (4.37 GB), once per resume, before DeepSpeed reads
the same files — cheap enough to be the default. ``checkpoint.verify: size`` keeps the size-only
check for very slow file systems.

``probe_writable`` tries a real write in the output folder before any process group starts, and
``describe_write_error`` turns torch's and DeepSpeed's messages about a failed write ("unexpected
pos", "Parent directory does not exist") into the errno that caused them (ENOSPC, EROFS, EACCES).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from beit_ds.engine.jsonlike import as_object

CHUNK = 8 << 20
_RANK_OF_FILE = re.compile(r"pp_rank_(\d+)_|rng_rank(\d+)\.")


def sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def writer_rank(name: str) -> int:
    """The rank that wrote checkpoint file ``name`` (ZeRO shard / RNG file), else rank 0."""
    m = _RANK_OF_FILE.search(name)
    return int(next(g for g in m.groups() if g is not None)) if m else 0


def manifest(folder: Path, rank: int, world_size: int, skip: str) -> dict[str, dict[str, int | str]]:
    """``{name: {"size", "sha256"}}`` of the files under ``folder`` that ``rank`` wrote (all files
    when ``world_size`` is 1), ``skip`` (the marker itself) left out."""
    out: dict[str, dict[str, int | str]] = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if not p.is_file() or p.name == skip:
            continue
        if world_size > 1 and writer_rank(name) % world_size != rank:
            continue
        out[name] = {"size": p.stat().st_size, "sha256": sha256(p)}
    return out


def damaged_file(folder: Path, files: Mapping[str, object], checksums: bool) -> str | None:
    """The first listed file that is missing, of another size or (``checksums``) another digest,
    with what is wrong; None when all match. Accepts old markers that list sizes only."""
    for name, entry in files.items():
        record = {"size": entry} if isinstance(entry, int) else as_object(entry)
        size, digest = record["size"], record.get("sha256")
        f = folder / name
        if not f.is_file():
            return f"{name} missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, not {size}"
        if checksums and digest is not None and sha256(f) != digest:
            return f"{name} has another SHA-256 than when it was saved (same-size damage)"
    return None


def probe_writable(folder: Path, key: str) -> str | None:
    """None when a file can be created in ``folder`` (made if missing), else a one-line reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)  # never a link
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        return f"{key}={str(folder)!r}: not writable ({_errno_name(err)}: {err.strerror})"
    return None


def _errno_name(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, "OSError")


def describe_write_error(err: BaseException, folder: Path) -> str:
    """Why writing under ``folder`` failed, in one line: the errno when the OS gave one, else what
    the folder's file system says now (full, read-only) besides the library's own message."""
    if isinstance(err, OSError) and err.errno is not None:
        return f"{_errno_name(err)}: {err.strerror}"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    near = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(near).free
    if free < CHUNK:
        return f"ENOSPC: no space left on device ({free // 1024} KiB free on {near}; {type(err).__name__}: {first})"
    if not os.access(near, os.W_OK) or probe_writable(near, "path") is not None:
        return f"EACCES/EROFS: {near} is not writable ({type(err).__name__}: {first})"
    return f"{type(err).__name__}: {first}"
