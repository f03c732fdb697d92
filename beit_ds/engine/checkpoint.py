"""Checkpoints that are complete or invisible (house style rule 15).

Layout under ``<output_dir>/checkpoints``::

    step_00001000/           DeepSpeed's files (ZeRO shards, model states, client state)
        rng_rank{r}.pt       each rank's RNG state
        COMPLETE.json        written by rank 0 after every rank finished: world size, global
                             batch, step, file sizes
    step_00001000_universal/ the same checkpoint for any world size (engine/elastic.py), made
                             when a resume changes the world size or by launch/convert_checkpoint.py
    latest.json              {"latest": tag, "history": [older tags …]} — replaced atomically

DeepSpeed's own ``latest`` file is never written (it would appear before the other ranks are
done). ``--resume auto`` reads ``latest.json`` only; a tag whose files do not match its
``COMPLETE.json`` is skipped for the previous one. Pruning keeps the newest ``keep_last``.
A universal folder is published the same way: converted in a staging folder, renamed into place,
then given its ``COMPLETE.json`` (``"universal": true``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from beit_ds.distributed import ProcessPlace, barrier, broadcast_object
from beit_ds.engine import elastic
from beit_ds.engine.state import TrainState, rng_state, set_rng_state
from beit_ds.logger import get_logger

POINTER = "latest.json"
MARKER = "COMPLETE.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names it and says why."""


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_pointer(ckpt_dir: Path) -> list[str]:
    """Complete tags, newest first (empty when there is no pointer yet)."""
    path = ckpt_dir / POINTER
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        return [data["latest"], *data.get("history", [])]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint pointer ({err})") from None


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def verify(tag_dir: Path) -> dict[str, Any]:
    """The ``COMPLETE.json`` of ``tag_dir`` once every file it lists has its recorded size."""
    marker = tag_dir / MARKER
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {tag_dir}: incomplete (no {MARKER}; the save was interrupted)")
    info = json.loads(marker.read_text())
    for name, size in info["files"].items():
        f = tag_dir / name
        if not f.is_file() or f.stat().st_size != size:
            raise CheckpointError(f"checkpoint {tag_dir}: damaged ({name} missing or not {size} bytes)")
    return info


def newest_complete(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that ``ckpt_dir/latest.json`` lists and that verifies (None when
    there is none); damaged or incomplete ones are skipped with a warning."""
    for tag in read_pointer(ckpt_dir):
        try:
            verify(ckpt_dir / tag)
            return ckpt_dir / tag
        except CheckpointError as err:
            get_logger().warning("%s; trying the previous checkpoint", err)
    return None


def resolve(source: Path) -> Path:
    """``source`` itself when it is a checkpoint folder, else the newest complete checkpoint of
    the run whose ``output_dir`` it is (for tools run outside training: export, conversion)."""
    if (source / MARKER).exists():
        return source
    found = newest_complete(source / "checkpoints")
    if found is None:
        raise CheckpointError(f"{source}: no complete checkpoint (expected a run dir or a step_* dir)")
    return found


class CheckpointManager:
    """Save / find / load / prune the DeepSpeed checkpoints of one run."""

    def __init__(self, output_dir: Path, keep_last: int, place: ProcessPlace, global_batch: int | None = None) -> None:
        self.dir = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.place = place
        self.global_batch = global_batch  # written into COMPLETE.json: a resume on another world size keeps it

    def save(self, engine: Any, state: TrainState, extra: dict[str, Any]) -> Path:
        """Collective: every rank writes its shards, then rank 0 publishes the tag."""
        tag = f"step_{state.step:08d}"
        tag_dir = self.dir / tag
        client = {"train_state": state.as_dict(), **extra}
        if self.place.is_main and tag_dir.exists():  # written again after a resume from an older one
            shutil.rmtree(tag_dir)
            shutil.rmtree(elastic.universal_dir(tag_dir), ignore_errors=True)
        barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client, save_latest=False)
        torch.save(rng_state(), tag_dir / f"rng_rank{self.place.rank}.pt")
        barrier()
        if self.place.is_main:
            info = {"world_size": self.place.world_size, "global_batch": self.global_batch, "step": state.step}
            _atomic_write_json(tag_dir / MARKER, {**info, "files": _file_sizes(tag_dir)})
            history = [t for t in read_pointer(self.dir) if t != tag]
            _atomic_write_json(self.dir / POINTER, {"latest": tag, "history": history})
            self._prune([tag, *history])
        barrier()
        get_logger().info("saved checkpoint %s", tag_dir)
        return tag_dir

    def _prune(self, tags: list[str]) -> None:
        keep, drop = tags[: self.keep_last], tags[self.keep_last :]
        _atomic_write_json(self.dir / POINTER, {"latest": keep[0], "history": keep[1:]})
        for tag in drop:
            shutil.rmtree(self.dir / tag, ignore_errors=True)
            shutil.rmtree(elastic.universal_dir(self.dir / tag), ignore_errors=True)

    def find(self, resume: str) -> Path | None:
        """The checkpoint to resume from: ``"auto"`` (newest complete, or None), ``"none"``, a path."""
        if resume == "none":
            return None
        if resume != "auto":
            path = Path(resume)
            verify(path)
            return path
        return newest_complete(self.dir)

    def load(self, engine: Any, tag_dir: Path) -> tuple[TrainState, dict[str, Any]]:
        """Restore engine (weights, optimizer, loss scaler) and RNG; returns the ``TrainState`` and
        the whole client state saved with it. On another world size from the universal form (the
        engine must be built with ``load_universal``)."""
        info = verify(tag_dir)
        if elastic.needs_universal(info, self.place.world_size):
            tag_dir = self._universal(tag_dir, info)
        path, client = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        if path is None:
            raise CheckpointError(f"checkpoint {tag_dir}: DeepSpeed could not load it")
        rng = tag_dir / f"rng_rank{self.place.rank}.pt"
        if info["world_size"] == self.place.world_size and rng.is_file():
            set_rng_state(torch.load(rng, weights_only=False))
        else:  # per-rank streams (drop path) cannot be mapped onto other ranks; the data order is global
            get_logger().info("RNG states not restored: saved on %d ranks, resumed on %d; ranks keep their seeds",
                              info["world_size"], self.place.world_size)
        return TrainState.from_dict(client["train_state"]), client

    def _universal(self, tag_dir: Path, info: dict[str, Any]) -> Path:
        """The universal form of ``tag_dir`` (``info``: its ``COMPLETE.json``): rank 0 converts it
        (once), every rank gets its path."""
        if info.get("universal"):
            return tag_dir
        error = None
        if self.place.is_main:
            try:
                to_universal(tag_dir)
            except Exception as err:  # every rank must learn about it, not only rank 0
                error = f"checkpoint {tag_dir}: universal conversion failed ({type(err).__name__}: {err})"
        error = broadcast_object(error)
        if error:
            raise CheckpointError(error)
        return elastic.universal_dir(tag_dir)


def to_universal(tag_dir: Path, out: Path | None = None, workers: int = 1) -> Path:
    """The universal form of the complete checkpoint ``tag_dir`` in ``out`` (default: its
    ``<tag>_universal`` sibling), converted unless already there; published atomically."""
    info = verify(tag_dir)
    if info.get("universal"):
        return tag_dir
    out = Path(out) if out is not None else elastic.universal_dir(tag_dir)
    try:
        verify(out)
        return out
    except CheckpointError:
        if out.exists() and out != elastic.universal_dir(tag_dir):
            raise CheckpointError(f"{out}: exists and is no complete universal checkpoint; expected a new folder") from None
    staging = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    done = staging / out.name
    elastic.ds_to_universal(tag_dir, done, workers)
    for rng in tag_dir.glob("rng_rank*.pt"):
        shutil.copy2(rng, done)
    shutil.rmtree(out, ignore_errors=True)  # our sibling, left by an interrupted publish: no marker yet
    os.replace(done, out)
    shutil.rmtree(staging, ignore_errors=True)
    meta = {k: v for k, v in info.items() if k != "files"}
    _atomic_write_json(out / MARKER, {**meta, "universal": True, "source": tag_dir.name, "files": _file_sizes(out)})
    get_logger().info("converted %s to a universal checkpoint: %s", tag_dir, out)
    return out
