"""Checkpoints that are complete or invisible (house style rule 15).

Layout under ``<output_dir>/checkpoints``::

    step_00001000/           DeepSpeed's files (ZeRO shards, model states, client state)
        rng_rank{r}.pt       each rank's RNG state
        COMPLETE.json        world size, global batch, step, lineage, kind, recipe, and each
                             file's size and SHA-256 (engine/integrity.py)
    step_00001000_universal/ the same checkpoint for any world size (engine/elastic.py)
    latest.json              {"latest": tag, "history": [older tags …]} — replaced atomically

A save writes into a hidden staging folder ``.step_X.saving`` and is published by one rename once
every rank's files are on disk and ``COMPLETE.json`` lists them; a complete checkpoint of the same
step is moved aside only after the new one is complete, and deleted only after the rename. A
failed save (ENOSPC, a read-only disk) removes its staging folder and ends the run with one line.
DeepSpeed's own ``latest`` file is never written.

``--resume auto`` takes the newest tag ``latest.json`` lists whose files verify; without a pointer
(deleted, or corrupt) the ``step_*`` folders themselves are the list, newest first. Every file is
read with the restricted unpickler (engine/safe_load.py): a crafted checkpoint runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch

from beit_ds import safe_write
from beit_ds.artifacts import IMPORTED, RunDir
from beit_ds.distributed import ProcessPlace, all_gather_object, barrier, broadcast_object
from beit_ds.engine import elastic, integrity, safe_load
from beit_ds.engine.jsonlike import as_object
from beit_ds.engine.protocols import TrainEngine
from beit_ds.engine.state import RngState, TrainState, rng_state, set_rng_state
from beit_ds.logger import get_logger

POINTER = "latest.json"
MARKER = "COMPLETE.json"
TAG = re.compile(r"^step_\d{8,}$")
STAGING = ".saving"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used or written; the message names it and says why."""


GROUP_NAMES = "fp32_group_names"


def fp32_group_names(engine: TrainEngine) -> dict[str, list[list[str]]]:
    """``{GROUP_NAMES: [[name, ...] per optimizer group]}`` for an engine whose optimizer keeps
    fp32 master copies outside ZeRO (stage 0 in bf16 / fp16: DeepSpeed's ``fp32_groups``, lists
    of unnamed tensors in group order), so that export can name them; ``{}`` otherwise."""
    groups = getattr(getattr(engine, "optimizer", None), "fp16_groups", None)
    if not groups or engine.zero_optimization_stage() != 0:
        return {}
    names = {id(p): n for n, p in engine.module.named_parameters()}
    return {GROUP_NAMES: [[names[id(p)] for p in group] for group in groups]}


def _atomic_write_json(path: Path, data: object) -> None:
    safe_write.write_text(path, json.dumps(data, indent=1))  # fsynced, renamed over path (a link there too)


def read_pointer(ckpt_dir: Path) -> list[str] | None:
    """Tags ``latest.json`` lists, newest first; None without a pointer; ``CheckpointError`` when it
    is unreadable or names something that is not a ``step_*`` tag."""
    path = ckpt_dir / POINTER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        tags = [data["latest"], *data.get("history", [])]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint pointer ({type(err).__name__})") from None
    bad = [t for t in tags if not isinstance(t, str) or not TAG.match(t)]
    if bad:
        raise CheckpointError(f"{path}: lists {bad[0]!r}, expected step_NNNNNNNN tags only")
    return tags


def scan_tags(ckpt_dir: Path) -> list[str]:
    """``step_*`` folders with a ``COMPLETE.json``, newest step first (the pointer's stand-in)."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if TAG.match(p.name) and (p / MARKER).is_file()]
    return sorted(tags, key=lambda t: int(t.split("_")[1]), reverse=True)


def listed_tags(ckpt_dir: Path) -> list[str]:
    """Candidate tags, newest first: the pointer's, or — pointer missing or corrupt — a scan."""
    try:
        tags = read_pointer(ckpt_dir)
    except CheckpointError as err:
        tags = None
        get_logger().warning("%s; using the step_* folders instead", err)
    if tags is not None:
        return tags
    found = scan_tags(ckpt_dir)
    if found:
        get_logger().warning("%s: no %s; found %d checkpoint folder(s), newest %s",
                             ckpt_dir, POINTER, len(found), found[0])
    return found


def read_marker(tag_dir: Path) -> dict[str, object]:
    """The ``COMPLETE.json`` of ``tag_dir`` as written (not verified)."""
    marker = tag_dir / MARKER
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {tag_dir}: incomplete (no {MARKER}; the save was interrupted)")
    try:
        info = json.loads(marker.read_text())
        assert isinstance(info, dict) and isinstance(info["files"], dict) and "world_size" in info
    except (ValueError, KeyError, AssertionError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {tag_dir}: damaged (unreadable {MARKER})") from None
    return info


def verify(tag_dir: Path, checksums: bool = True) -> dict[str, object]:
    """The ``COMPLETE.json`` of ``tag_dir`` once every file it lists has its recorded size (and,
    with ``checksums``, SHA-256)."""
    info = read_marker(tag_dir)
    wrong = integrity.damaged_file(tag_dir, as_object(info["files"]), checksums)
    if wrong:
        raise CheckpointError(f"checkpoint {tag_dir}: damaged ({wrong})")
    return info


def newest_complete(ckpt_dir: Path, checksums: bool = True) -> Path | None:
    """The newest listed checkpoint that verifies (None when there is none); damaged or incomplete
    ones are skipped with a warning."""
    for tag in listed_tags(ckpt_dir):
        try:
            verify(ckpt_dir / tag, checksums)
            return ckpt_dir / tag
        except CheckpointError as err:
            get_logger().warning("%s; trying the previous checkpoint", err)
    return None


def _names_a_tag(path: Path) -> bool:
    """Whether the folder ``path`` is one checkpoint (complete or not, universal or not)."""
    return (path / MARKER).exists() or bool(TAG.match(path.name)) or path.name.endswith(elastic.SUFFIX)


def is_checkpoint_path(path: Path) -> bool:
    """Whether ``path`` is meant as a checkpoint: a ``step_*`` folder (complete or not), a
    ``checkpoints/`` folder or a run folder holding checkpoints."""
    if not path.is_dir():
        return False
    if _names_a_tag(path):
        return True
    return any((d / POINTER).exists() or scan_tags(d) for d in (path, RunDir(path).checkpoints))


def resolve(source: Path, checksums: bool = True) -> Path:
    """The verified checkpoint ``source`` names: a ``step_*`` folder, the ``checkpoints/`` folder
    of a run, or the run folder (its newest complete checkpoint); a one-line error saying what
    ``source`` is otherwise."""
    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or directory")
    if not source.is_dir():
        raise CheckpointError(f"{source}: a file, expected a checkpoint folder (step_*), checkpoints/ or a run folder")
    if _names_a_tag(source):
        verify(source, checksums)
        return source
    for ckpt_dir in (source, RunDir(source).checkpoints):
        if (ckpt_dir / POINTER).is_file() or scan_tags(ckpt_dir):
            found = newest_complete(ckpt_dir, checksums)
            if found is None:
                raise CheckpointError(f"{ckpt_dir}: no complete checkpoint (every one listed is damaged or incomplete)")
            return found
    raise CheckpointError(
        f"{source}: not a checkpoint (expected a step_* folder with {MARKER}, a checkpoints/ folder or a run folder)"
    )


class CheckpointManager:
    """Save / find / load / prune the DeepSpeed checkpoints of one run."""

    def __init__(self, output_dir: Path, keep_last: int, place: ProcessPlace, global_batch: int | None = None,
                 checksums: bool = True) -> None:
        self.run = RunDir(output_dir)
        self.dir = self.run.checkpoints
        self.keep_last = keep_last
        self.place = place
        self.global_batch = global_batch  # written into COMPLETE.json: a resume on another world size keeps it
        self.checksums = checksums
        self.meta: dict[str, object] = {}  # lineage, kind, recipe: written into every COMPLETE.json

    def save(self, engine: TrainEngine, state: TrainState, extra: Mapping[str, object]) -> Path:
        """Collective: every rank writes its shards into the staging folder, then rank 0 publishes."""
        tag = f"step_{state.step:08d}"
        staging = self.dir / f".{tag}{STAGING}"
        if self.place.is_main:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
        barrier()
        files: dict[str, dict[str, int | str]] = {}
        error = None
        try:
            engine.save_checkpoint(str(self.dir), tag=staging.name, client_state={"train_state": state.as_dict(),
                                   **extra, **fp32_group_names(engine)}, save_latest=False)
            torch.save(rng_state(), staging / f"rng_rank{self.place.rank}.pt")
            files = integrity.manifest(staging, self.place.rank, self.place.world_size, MARKER)
        except (OSError, RuntimeError) as err:
            error = f"checkpoint {self.dir / tag}: save failed ({integrity.describe_write_error(err, self.dir)})"
        gathered = cast(list[tuple[str | None, dict[str, dict[str, int | str]]]], all_gather_object((error, files)))
        errors = [e for e, _ in gathered if e]
        if self.place.is_main and not errors:
            every = {name: entry for _, part in gathered for name, entry in part.items()}
            try:
                self._publish(staging, tag, every, state.step)
            except OSError as err:
                errors.append(f"checkpoint {self.dir / tag}: publishing failed"
                              f" ({integrity.describe_write_error(err, self.dir)})")
        if self.place.is_main and errors:
            shutil.rmtree(staging, ignore_errors=True)
        failed = broadcast_object(errors[0] if errors else None)
        if failed:
            raise CheckpointError(f"{failed}; the previous checkpoints are unchanged")
        get_logger().info("saved checkpoint %s", self.dir / tag)
        return self.dir / tag

    def _publish(self, staging: Path, tag: str, files: dict[str, dict[str, int | str]], step: int) -> None:
        info = {"world_size": self.place.world_size, "global_batch": self.global_batch, "step": step, **self.meta}
        _atomic_write_json(staging / MARKER, {**info, "files": files})
        final, aside = self.dir / tag, self.dir / f".{tag}.replaced"
        history = [t for t in listed_tags(self.dir) if t != tag]
        if final.exists():  # written again after a resume from an older one: replaced only now
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(elastic.universal_dir(final), ignore_errors=True)  # converted from the replaced one
        _atomic_write_json(self.dir / POINTER, {"latest": tag, "history": history})
        shutil.rmtree(aside, ignore_errors=True)
        self._prune([tag, *history])

    def _prune(self, tags: list[str]) -> None:
        keep, drop = tags[: self.keep_last], tags[self.keep_last :]
        _atomic_write_json(self.dir / POINTER, {"latest": keep[0], "history": keep[1:]})
        for tag in drop:
            shutil.rmtree(self.dir / tag, ignore_errors=True)
            shutil.rmtree(elastic.universal_dir(self.dir / tag), ignore_errors=True)

    def find(self, resume: str) -> Path | None:
        """The checkpoint to resume from: ``"auto"`` (newest complete, or None), ``"none"``, or a
        path (a ``step_*`` folder, a ``checkpoints/`` folder or a run folder)."""
        if resume == "none":
            return None
        if resume != "auto":
            try:
                return resolve(Path(resume), self.checksums)
            except CheckpointError as err:
                raise CheckpointError(f"--resume {err}") from None
        return newest_complete(self.dir, self.checksums)

    def load(self, engine: TrainEngine, tag_dir: Path) -> tuple[TrainState, dict[str, object]]:
        """Restore engine (weights, optimizer, loss scaler) and RNG from the verified ``tag_dir``;
        returns the ``TrainState`` and the whole client state saved with it. On another world size
        from the universal form (the engine must be built with ``load_universal``)."""
        info = read_marker(tag_dir)
        universal = elastic.needs_universal(info, self.place.world_size)
        if universal:
            tag_dir = self._universal(tag_dir, info)
        try:
            safe_load.check_files(tag_dir, "checkpoint")
            with safe_load.weights_only_loading():
                path, client = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
            if universal:
                elastic.restore_buffers(engine.module, tag_dir)
        except safe_load.UnsafeFileError as err:
            raise CheckpointError(str(err)) from None
        if path is None or client is None:
            raise CheckpointError(f"checkpoint {tag_dir}: DeepSpeed could not load it")
        rng = tag_dir / f"rng_rank{self.place.rank}.pt"
        if info["world_size"] == self.place.world_size and rng.is_file():
            try:
                set_rng_state(cast(RngState, safe_load.load(rng, "checkpoint file")))  # as rng_state() saved it
            except safe_load.UnsafeFileError as err:
                raise CheckpointError(str(err)) from None
        else:  # per-rank streams (drop path) cannot be mapped onto other ranks; the data order is global
            get_logger().info("RNG states not restored: saved on %d ranks, resumed on %d; ranks keep their seeds",
                              info["world_size"], self.place.world_size)
        return TrainState.from_dict(as_object(client["train_state"])), client

    def universal_target(self, tag_dir: Path) -> Path:
        """Where this run puts the universal form of ``tag_dir``: beside it when it is one of this
        run's checkpoints, else under this run's ``checkpoints/imported/`` (never in a folder this
        run was only asked to read)."""
        if tag_dir.parent.resolve() == self.dir.resolve():
            return elastic.universal_dir(tag_dir)
        return self.run.imported / _imported_name(tag_dir)

    def _universal(self, tag_dir: Path, info: Mapping[str, object]) -> Path:
        """The universal form of ``tag_dir`` (``info``: its ``COMPLETE.json``): rank 0 converts it
        (once), every rank gets its path."""
        if info.get("universal"):
            return tag_dir
        out = self.universal_target(tag_dir)
        error = None
        if self.place.is_main:
            try:
                to_universal(tag_dir, out, checksums=False)  # find() verified it before the load
            except Exception as err:  # every rank must learn about it, not only rank 0
                error = f"checkpoint {tag_dir}: universal conversion failed ({type(err).__name__}: {err})"
        failed = broadcast_object(error)
        if failed:
            raise CheckpointError(str(failed))
        return out


def _imported_name(tag_dir: Path) -> str:
    """The folder name a run gives the universal form of another run's checkpoint ``tag_dir``."""
    digest = hashlib.sha256(str(tag_dir.resolve()).encode()).hexdigest()[:10]
    return f"{tag_dir.name}_{digest}{elastic.SUFFIX}"


def _converted_from(out: Path, tag_dir: Path) -> bool | None:
    """Whether the existing folder ``out`` is a complete universal form of ``tag_dir`` (True), a
    stale or damaged one that may be replaced (False), or something else, never replaced (None):
    only the default ``<tag>_universal``, the name a run gives an imported one, an empty folder or
    one whose marker names ``tag_dir`` as its source are this checkpoint's."""
    source = str(tag_dir.resolve())
    try:
        if verify(out).get("source_path", source) == source:
            return True
    except CheckpointError:
        pass
    if out.is_symlink() or not out.is_dir():
        return None
    named = out.resolve() == elastic.universal_dir(tag_dir).resolve() or (
        out.parent.name == IMPORTED and out.name == _imported_name(tag_dir))
    try:
        marker = json.loads((out / MARKER).read_text())
        stale = isinstance(marker, dict) and marker.get("universal") is True and marker.get("source_path") == source
    except (OSError, ValueError):
        stale = False
    return False if named or stale or not any(out.iterdir()) else None


def to_universal(tag_dir: Path, out: Path | None = None, workers: int = 1, checksums: bool = True) -> Path:
    """The universal form of the complete checkpoint ``tag_dir`` in ``out`` (default: its
    ``<tag>_universal`` sibling), converted unless already there; published atomically, its marker
    included. An existing ``out`` that is no form of ``tag_dir`` is left untouched (one-line error).
    ``checksums=False``: sizes only, for a caller that has just verified ``tag_dir``."""
    info = verify(tag_dir, checksums)
    if info.get("universal"):
        return tag_dir
    if not elastic.partitioned(info):
        raise CheckpointError(f"checkpoint {tag_dir}: ZeRO stage 0 (no optimizer shards) loads on any world size"
                              " as it is; it has no universal form")
    out = Path(out) if out is not None else elastic.universal_dir(tag_dir)
    if out.exists() or out.is_symlink():
        mine = _converted_from(out, tag_dir)
        if mine:
            return out  # converted before
        if mine is None:
            raise CheckpointError(f"{out}: exists and is no universal form of {tag_dir}; expected a new folder"
                                  " (left untouched)")
    try:
        safe_load.check_files(tag_dir, "checkpoint")
    except safe_load.UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    done = staging / out.name
    with safe_load.weights_only_loading():
        elastic.ds_to_universal(tag_dir, done, workers)
    for rng in tag_dir.glob("rng_rank*.pt"):
        shutil.copy2(rng, done)
    meta = {k: v for k, v in info.items() if k != "files"}
    marker = {**meta, "universal": True, "source": tag_dir.name, "source_path": str(tag_dir.resolve())}
    _atomic_write_json(done / MARKER, {**marker, "files": integrity.manifest(done, 0, 1, MARKER)})
    if out.exists():  # a stale form of this checkpoint: set aside, deleted once the new one is in place
        os.replace(out, staging / "replaced")
    os.replace(done, out)
    shutil.rmtree(staging, ignore_errors=True)
    get_logger().info("converted %s to a universal checkpoint: %s", tag_dir, out)
    return out
