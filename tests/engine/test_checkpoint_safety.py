"""No lost checkpoints (issue 12, items 3-7 and 11), through a real ZeRO-2 engine on one rank."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from beit_ds.cli import run_cli
from beit_ds.config import ConfigError
from beit_ds.distributed import ProcessPlace
from beit_ds.engine import integrity, resume_guard
from beit_ds.engine.checkpoint import (
    MARKER,
    CheckpointError,
    CheckpointManager,
    read_marker,
    resolve,
    to_universal,
)
from beit_ds.engine.state import TrainState
from tests.engine.test_checkpoint import _engine, _step

RECIPE = {"model": {"depth": 2, "embed_dim": 64, "drop_path_rate": 0.2}, "mim": {"vocab_size": 32}}


def _run(tmp_path: Path, engine, steps, lineage: str = "A", keep_last: int = 5) -> CheckpointManager:
    manager = CheckpointManager(tmp_path, keep_last=keep_last, place=ProcessPlace())
    manager.meta = {"lineage": lineage, "kind": "pretrain", "recipe": RECIPE}
    for step in steps:
        _step(engine, step)
        manager.save(engine, TrainState(step=step), {})
    return manager


@pytest.fixture(scope="module")
def engine(ds_single_rank):
    return _engine(ds_single_rank)


def test_missing_or_corrupt_pointer_resumes_the_newest_verified_step(engine, tmp_path):
    manager = _run(tmp_path, engine, (4, 8, 12))
    ckpt = tmp_path / "checkpoints"
    (ckpt / "latest.json").unlink()
    assert manager.find("auto") == ckpt / "step_00000012"  # not "starting from scratch"
    (ckpt / "latest.json").write_text("{not json")
    assert manager.find("auto") == ckpt / "step_00000012"
    (ckpt / "step_00000012" / MARKER).unlink()  # newest incomplete: the scan skips it
    assert manager.find("auto") == ckpt / "step_00000008"
    (ckpt / "latest.json").write_text(json.dumps({"latest": "../../etc", "history": []}))
    assert manager.find("auto") == ckpt / "step_00000008"  # a pointer naming a non-tag is not followed


def test_same_size_damage_is_detected_by_checksum(engine, tmp_path):
    manager = _run(tmp_path, engine, (1, 2))
    ckpt = tmp_path / "checkpoints"
    shard = ckpt / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the size is unchanged
    shard.write_bytes(bytes(data))
    assert manager.find("auto") == ckpt / "step_00000001"
    with pytest.raises(CheckpointError, match="another SHA-256 than when it was saved"):
        manager.find(str(ckpt / "step_00000002"))
    sizes_only = CheckpointManager(tmp_path, 5, ProcessPlace(), checksums=False)
    assert sizes_only.find("auto") == ckpt / "step_00000002"  # checkpoint.verify: size does not see it


def test_resaving_a_step_replaces_it_only_once_the_new_one_is_complete(engine, tmp_path, monkeypatch):
    manager = _run(tmp_path, engine, (1, 2))
    ckpt = tmp_path / "checkpoints"
    before = read_marker(ckpt / "step_00000002")

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(engine, "save_checkpoint", disk_full)
    with pytest.raises(CheckpointError, match="step_00000002: save failed .*the previous checkpoints are unchanged"):
        manager.save(engine, TrainState(step=2), {})
    monkeypatch.undo()
    assert read_marker(ckpt / "step_00000002") == before  # the complete one is still there, untouched
    assert manager.find("auto") == ckpt / "step_00000002"
    assert not list(ckpt.glob(".*saving"))  # the unpublished staging folder is gone
    manager.save(engine, TrainState(step=2), {})  # a real re-save replaces it
    assert manager.find(str(ckpt / "step_00000002")) == ckpt / "step_00000002"  # verifies after the re-save
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]  # no staging or set-aside folder left


def test_full_disk_is_named_and_leaves_no_partial_folder(engine, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)], check=True)
    try:
        manager = _run(mount, engine, (1,))  # ~500 KB: fits once
        with pytest.raises(CheckpointError, match=r"step_00000002: save failed \(ENOSPC"):
            manager.save(engine, TrainState(step=2), {})
        ckpt = mount / "checkpoints"
        assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith(("step_", "."))) == ["step_00000001"]
        assert manager.find("auto") == ckpt / "step_00000001"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_unwritable_output_dir_is_found_before_training(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)], check=True)
    try:
        reason = integrity.probe_writable(mount / "run" / "checkpoints", "checkpoint.output_dir")
        assert reason is not None and "not writable (EROFS" in reason and "checkpoint.output_dir=" in reason
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert integrity.probe_writable(tmp_path / "fine", "checkpoint.output_dir") is None


def test_another_lineage_is_never_overwritten_silently(engine, tmp_path):
    _run(tmp_path, engine, (4, 8), lineage="A")
    ckpt = tmp_path / "checkpoints"
    resume_guard.guard_output(ckpt, "A", overwrite=False)  # resuming its own run: fine
    with pytest.raises(ConfigError, match=r"holds 2 complete checkpoint\(s\) of another run \(newest step_00000008\)"):
        resume_guard.guard_output(ckpt, "B", overwrite=False)  # --resume none, or another run's checkpoint
    resume_guard.guard_output(ckpt, "B", overwrite=True)
    (ckpt / "latest.json").write_text("garbage")  # read up front whatever --resume is
    with pytest.raises(ConfigError, match="another run"):
        resume_guard.guard_output(ckpt, "B", overwrite=False)


def test_resuming_another_architecture_lists_the_differing_keys(engine, tmp_path):
    _run(tmp_path, engine, (1,))
    tag = tmp_path / "checkpoints" / "step_00000001"
    resume_guard.check_resumable(tag, "pretrain", {**RECIPE, "model": {**RECIPE["model"], "drop_path_rate": 0.0}})
    other = {"model": {"depth": 4, "embed_dim": 64}, "mim": {"vocab_size": 8192}}
    with pytest.raises(ConfigError, match=r"model.depth: checkpoint 2, recipe 4; mim.vocab_size: checkpoint 32, recipe 8192"):
        resume_guard.check_resumable(tag, "pretrain", other)
    with pytest.raises(ConfigError, match="a pretrain checkpoint, this is a finetune run"):
        resume_guard.check_resumable(tag, "finetune", RECIPE)


def test_another_runs_checkpoint_is_converted_into_this_run(engine, tmp_path):
    _run(tmp_path / "theirs", engine, (1,))
    theirs = tmp_path / "theirs" / "checkpoints"
    listing = sorted(p.name for p in theirs.iterdir())
    ours = CheckpointManager(tmp_path / "ours", 3, ProcessPlace(world_size=2))
    out = ours._universal(theirs / "step_00000001", read_marker(theirs / "step_00000001"))
    assert out.parent == tmp_path / "ours" / "checkpoints" / "imported" and (out / MARKER).is_file()
    assert sorted(p.name for p in theirs.iterdir()) == listing  # nothing written into the other run


def test_resume_paths_say_what_they_are(engine, tmp_path):
    _run(tmp_path / "run", engine, (3,))
    with pytest.raises(CheckpointError, match="no such file or directory"):
        resolve(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve(tmp_path / "plain")
    tag = tmp_path / "run" / "checkpoints" / "step_00000003"
    assert resolve(tmp_path / "run") == resolve(tmp_path / "run" / "checkpoints") == resolve(tag) == tag
    shutil.copytree(tag, tmp_path / "step_00000009")
    (tmp_path / "step_00000009" / MARKER).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve(tmp_path / "step_00000009")


def test_links_planted_in_the_checkpoints_folder_are_replaced_not_followed(engine, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "latest.json").symlink_to(victim)
    (ckpt / f".latest.json.tmp{os.getpid()}").symlink_to(victim)  # the temporary name a writer might pick
    manager = _run(tmp_path / "run", engine, (1,))
    assert victim.read_text() == "precious"
    assert not (ckpt / "latest.json").is_symlink() and manager.find("auto") == ckpt / "step_00000001"


def test_convert_out_replaces_only_a_universal_form_of_the_same_checkpoint(engine, tmp_path, capsys):
    _run(tmp_path / "run", engine, (1,))
    tag = tmp_path / "run" / "checkpoints" / "step_00000001"
    mine = tmp_path / "imported" / "mine"  # a user's folder, under a parent that happens to be named so
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=f"^{mine}: exists and is no universal form of {tag}") as err:
        to_universal(tag, mine)
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as stop:  # as launch/convert_checkpoint.py runs it
        run_cli(lambda: to_universal(tag, mine))
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {err.value}"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"

    out = to_universal(tag, tmp_path / "elsewhere" / "universal")
    (out / "zero" / "optimizer_state.pt").write_bytes(b"damaged")  # a stale form of this very checkpoint
    assert to_universal(tag, out) == out and read_marker(out)["universal"] is True
    assert to_universal(tag, out, checksums=True) == out  # replaced by a good conversion


def test_this_runs_imported_universal_form_is_converted_again_when_damaged(engine, tmp_path):
    _run(tmp_path / "theirs", engine, (1,))
    tag = tmp_path / "theirs" / "checkpoints" / "step_00000001"
    ours = CheckpointManager(tmp_path / "ours", 3, ProcessPlace(world_size=2))
    out = ours._universal(tag, read_marker(tag))
    (out / MARKER).unlink()  # an interrupted publish of an older version
    assert ours._universal(tag, read_marker(tag)) == out
    assert resolve(out) == out


def test_the_write_probe_never_writes_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / f".write_probe.{os.getpid()}").symlink_to(victim)
    assert integrity.probe_writable(folder, "checkpoint.output_dir") is None
    assert victim.read_text() == "precious"
