"""Writes that never follow a link planted in a run folder (safe_write.py): whole files replace the
link itself, appended and locked files must be regular, folders must be folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from beit_ds.config import ConfigError
from beit_ds.safe_write import make_dir, open_append, open_regular, replacing, write_text


def test_a_whole_file_replaces_a_planted_link_not_its_target(tmp_path: Path, victim: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").symlink_to(victim)
    write_text(run / "recipe.yaml", "model: {}\n")
    assert victim.read_text() == "precious"
    assert not (run / "recipe.yaml").is_symlink() and (run / "recipe.yaml").read_text() == "model: {}\n"
    assert sorted(p.name for p in run.iterdir()) == ["recipe.yaml"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(tmp_path / "latest.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["latest.json"]
    assert (tmp_path / "latest.json").read_text() == "old"


def test_appending_refuses_links_folders_and_pipes_in_one_line(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "link.jsonl").symlink_to(victim)
    (tmp_path / "folder.jsonl").mkdir()
    os.mkfifo(tmp_path / "pipe.jsonl")  # no reader: an ordinary open would block for ever
    for name, what in [("link.jsonl", "a symbolic link"), ("folder.jsonl", "a folder"), ("pipe.jsonl", "a pipe")]:
        with pytest.raises(ConfigError, match=f"^{tmp_path / name}: {what}") as err:
            open_append(tmp_path / name)
        assert "\n" not in str(err.value)
    assert victim.read_text() == "precious"
    with open_append(tmp_path / "metrics.jsonl") as f:
        f.write("{}\n")
    with open_append(tmp_path / "metrics.jsonl") as f:
        f.write("{}\n")
    assert (tmp_path / "metrics.jsonl").read_text() == "{}\n{}\n"


def test_a_regular_file_is_opened_close_on_exec(tmp_path: Path) -> None:
    fd = open_regular(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    try:
        assert not os.get_inheritable(fd) and os.get_blocking(fd)
    finally:
        os.close(fd)


def test_folders_must_be_folders(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "tensorboard").symlink_to(victim.parent)
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'tensorboard'}: a symbolic link, expected a folder"):
        make_dir(tmp_path / "tensorboard")
    assert make_dir(tmp_path / "tensorboard", link_ok=True) == tmp_path / "tensorboard"  # a folder a user named
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        make_dir(tmp_path / "file", link_ok=True)
    assert make_dir(tmp_path / "a" / "b").is_dir()
