"""A checkpoint as a run left it, for whatever reads it without a job (export, evaluation,
``finetune.init``): its kind, its recipe and its client state.

The kind and the recipe are stored once per checkpoint, in ``COMPLETE.json``; checkpoints written
before they were recorded there have them in the client state (older still: no kind, which was
pre-training). The client state (``TrainState``, a task's ``extra_state``) is read from rank 0's
model-states file with the restricted unpickler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from beit_ds.engine import safe_load
from beit_ds.engine.checkpoint import CheckpointError, read_marker


def checkpoint_client_state(tag_dir: Path) -> dict[str, object]:
    """The client state rank 0 stored with DeepSpeed's model states (read without running code)."""
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"checkpoint {tag_dir}: no mp_rank_*_model_states.pt (not a DeepSpeed checkpoint)")
    try:
        states = safe_load.load(files[0], "checkpoint file")
    except safe_load.UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    if not isinstance(states, dict):
        raise CheckpointError(f"checkpoint {tag_dir}: {files[0].name} holds no model states mapping")
    return states


@dataclass
class SavedCheckpoint:
    """``tag_dir``, the ``kind`` and ``recipe`` (plain mapping) it was saved with, its client state."""

    tag_dir: Path
    kind: str
    recipe: dict[str, object]
    client: dict[str, object]


def stored_identity(
    tag_dir: Path, info: Mapping[str, object] | None = None, client: Mapping[str, object] | None = None
) -> tuple[str | None, object]:
    """(kind, recipe) ``tag_dir`` was saved with, as recorded — None where nothing was: from its
    ``COMPLETE.json`` (``info``, read when not given), else from the client state of a checkpoint
    written before they were recorded there (``client``, read only then when not given)."""
    info = read_marker(tag_dir) if info is None else info
    if "kind" in info or "recipe" in info:
        return _kind(info.get("kind")), info.get("recipe")
    if client is None:
        if not any(tag_dir.glob("mp_rank_*_model_states.pt")):
            return None, None
        client = checkpoint_client_state(tag_dir)
    return _kind(client.get("kind")), client.get("recipe")


def _kind(value: object) -> str | None:
    return None if value is None else str(value)


def read_saved(tag_dir: Path) -> SavedCheckpoint:
    """The ``SavedCheckpoint`` of ``tag_dir`` (one-line ``CheckpointError`` when unreadable); a
    checkpoint with no kind recorded anywhere is a pre-training one (the only kind there was)."""
    info = read_marker(tag_dir)
    client = checkpoint_client_state(tag_dir)
    kind, recipe = stored_identity(tag_dir, info, client)
    kind = kind or "pretrain"
    if not isinstance(recipe, dict):
        raise CheckpointError(f"checkpoint {tag_dir}: no recipe recorded (in {tag_dir / 'COMPLETE.json'} or its client state)")
    return SavedCheckpoint(tag_dir, str(kind), recipe, client)
