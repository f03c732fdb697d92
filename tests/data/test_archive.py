"""Compressed archives (data/archive.py): extracted once, and never anything but regular files and
folders inside the cache folder, whatever the Python version's own tar filter lets through."""

from __future__ import annotations

import copy
import io
import os
import tarfile
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.data.archive import cache_key, extracted_folder
from beit_ds.data.skips import DataError


def _archive(path: Path, members: list[tarfile.TarInfo]) -> Path:
    """A ``.tar.gz`` holding a harmless image-like file, then ``members`` (files get 5 bytes)."""
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("set/cat/a.jpg")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"jpg"))
        for member in members:
            tar.addfile(member, io.BytesIO(b"owned") if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 5 if kind == tarfile.REGTYPE else 0
    return info


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_well_formed_archive_is_extracted_once(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "set.tar.gz", [_member("set/dog/b.jpg")])
    root = extracted_folder(archive, tmp_path / "cache")
    assert _listing(root) == ["set", "set/cat", "set/cat/a.jpg", "set/dog", "set/dog/b.jpg"]
    assert (root / "set/dog/b.jpg").read_bytes() == b"owned"
    assert extracted_folder(archive, tmp_path / "cache") == root
    assert [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize(
    "member, why",
    [
        (_member("set/inner", tarfile.SYMTYPE, "cat/a.jpg"), "a symbolic link"),  # inside: refused all the same
        (_member("set/up", tarfile.SYMTYPE, "../../../victim.txt"), "a symbolic link"),
        (_member("set/hard", tarfile.LNKTYPE, "set/cat/a.jpg"), "a hard link"),
        (_member("set/pipe", tarfile.FIFOTYPE), "a device or pipe"),
        (_member("set/tty", tarfile.CHRTYPE), "a device or pipe"),
        (_member("../escape.txt"), "outside the archive's folder"),
        (_member("set/../../escape.txt"), "outside the archive's folder"),
        (_member("/ABSOLUTE/escape.txt"), "an absolute path"),
    ],
)
def test_links_devices_and_escaping_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    outside = tmp_path / "outside"
    victim = outside / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    cache = outside / "a" / "b" / "cache"
    member = copy.copy(member)  # the parameter is shared by every run of the module
    member.name = member.name.replace("/ABSOLUTE", str(outside))
    archive = _archive(tmp_path / "evil.tar.gz", [member])
    with pytest.raises(DataError) as err:
        extracted_folder(archive, cache)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"data.path={str(archive)!r}: member {member.name!r} is {why}"), message
    assert victim.read_text() == "precious"
    lock = f"a/b/cache/{cache_key(archive)}.lock"  # the extraction lock stays, nothing else
    assert _listing(outside) == ["a", "a/b", "a/b/cache", lock, "victim.txt"]


def test_a_planted_link_in_place_of_the_temporary_folder_is_not_followed(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "set.tar.gz", [])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{cache_key(archive)}.tmp-{os.getpid()}").symlink_to(elsewhere)  # the temporary name, as a link
    root = extracted_folder(archive, cache)
    assert (root / "set/cat/a.jpg").read_bytes() == b"jpg"
    assert list(elsewhere.iterdir()) == []


def test_a_planted_lock_link_in_the_cache_is_refused_not_truncated(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "set.tar.gz", [])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "shared_cache"
    cache.mkdir()
    (cache / f"{cache_key(archive)}.lock").symlink_to(victim)
    with pytest.raises(ConfigError, match=f"^{cache / cache_key(archive)}.lock: a symbolic link"):
        extracted_folder(archive, cache)
    assert victim.read_text() == "precious"
