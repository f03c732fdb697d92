"""Checkpoints that are complete or invisible (house style rule 15).

Layout under ``<output_dir>/checkpoints``::

    step_00001000/           DeepSpeed's files (ZeRO shards, model states, client state)
        rng_rank{r}.pt       each rank's RNG state
        COMPLETE.json        written by rank 0 after every rank finished: world size, file sizes
    latest.json              {"latest": tag, "history": [older tags …]} — replaced atomically

DeepSpeed's own ``latest`` file is never written (it would appear before the other ranks are
done). ``--resume auto`` reads ``latest.json`` only; a tag whose files do not match its
``COMPLETE.json`` is skipped for the previous one. Pruning keeps the newest ``keep_last``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from beit_ds.distributed import ProcessPlace, barrier
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


class CheckpointManager:
    """Save / find / load / prune the DeepSpeed checkpoints of one run."""

    def __init__(self, output_dir: Path, keep_last: int, place: ProcessPlace) -> None:
        self.dir = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.place = place

    def save(self, engine: Any, state: TrainState, extra: dict[str, Any]) -> Path:
        """Collective: every rank writes its shards, then rank 0 publishes the tag."""
        tag = f"step_{state.step:08d}"
        tag_dir = self.dir / tag
        client = {"train_state": state.as_dict(), **extra}
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client, save_latest=False)
        torch.save(rng_state(), tag_dir / f"rng_rank{self.place.rank}.pt")
        barrier()
        if self.place.is_main:
            files = {p.name: p.stat().st_size for p in sorted(tag_dir.iterdir()) if p.name != MARKER}
            _atomic_write_json(
                tag_dir / MARKER, {"world_size": self.place.world_size, "step": state.step, "files": files}
            )
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

    def find(self, resume: str) -> Path | None:
        """The checkpoint to resume from: ``"auto"`` (newest complete, or None), ``"none"``, a path."""
        if resume == "none":
            return None
        if resume != "auto":
            path = Path(resume)
            verify(path)
            return path
        for tag in read_pointer(self.dir):
            try:
                verify(self.dir / tag)
                return self.dir / tag
            except CheckpointError as err:
                get_logger().warning("%s; trying the previous checkpoint", err)
        return None

    def load(self, engine: Any, tag_dir: Path) -> TrainState:
        """Restore engine (weights, optimizer, loss scaler), RNG and the ``TrainState``."""
        info = verify(tag_dir)
        if info["world_size"] != self.place.world_size:
            raise CheckpointError(
                f"checkpoint {tag_dir}: saved on {info['world_size']} ranks, resuming on {self.place.world_size}"
                " needs DeepSpeed's universal checkpoint conversion (not supported yet)"
            )
        path, client = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        if path is None:
            raise CheckpointError(f"checkpoint {tag_dir}: DeepSpeed could not load it")
        set_rng_state(torch.load(tag_dir / f"rng_rank{self.place.rank}.pt", weights_only=False))
        return TrainState.from_dict(client["train_state"])
