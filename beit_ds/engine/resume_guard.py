"""What may be resumed, and what a run may overwrite, decided before any process group.

* **Same architecture.** A checkpoint stores its ``kind`` and recipe (``COMPLETE.json``; older
  checkpoints in the client state). Resuming it with a recipe whose shape-defining keys differ
  (``model.*`` except run-time switches, ``mim.*``, ``probe.*``, a tokenizer's ``tokenizer.dvae``)
  is a one-line error listing them, instead of a state-dict traceback from inside DeepSpeed.
* **Same optimizer layout.** DeepSpeed stores the optimizer state per ZeRO stage and precision:
  flat shards (stage 1/2; bf16 ones under other file names) or one state in the model-states file
  (stage 0; the bf16 wrapper's differs from torch's). Only a stage 1 <-> 2 change in the same
  precision loads; any other change of stage or precision is a one-line error naming both, instead
  of DeepSpeed's ``AttributeError`` / ``KeyError`` / missing-file traceback.
* **Lineage.** A run started from scratch gets a new lineage id; a resumed run keeps its
  checkpoint's. The output folder's complete checkpoints of another lineage are never replaced
  silently: ``--resume none`` (or a checkpoint of another run) on a folder that holds some is
  refused unless ``--overwrite`` is given, and then each one is named in a warning.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from beit_ds.config import ConfigError
from beit_ds.engine.checkpoint import CheckpointError, listed_tags, read_marker
from beit_ds.engine.ds_setup import zero_stage
from beit_ds.engine.jsonlike import as_object
from beit_ds.engine.saved import stored_identity
from beit_ds.logger import get_logger

# model.* keys that change how a run computes, not the shapes or meaning of its weights
RUNTIME_MODEL_KEYS = {"drop_path_rate", "grad_checkpointing", "compile", "attn_impl", "init_std", "init_trunc"}
ARCH_SECTIONS = {"pretrain": ("model", "mim"), "finetune": ("model",), "linear_probe": ("model", "probe"),
                 "tokenizer": ("tokenizer.dvae",), "dino": ("model", "mim", "dino.head"),
                 "segmentation": ("model", "decode")}


def lineage_of(info: Mapping[str, object], tag_dir: Path) -> str:
    """The lineage id in a ``COMPLETE.json``; checkpoints written before lineages existed share one
    per folder."""
    return str(info.get("lineage") or f"legacy:{tag_dir.parent.resolve()}")


def new_lineage() -> str:
    return uuid.uuid4().hex


def _section(recipe: Mapping[str, object], dotted: str) -> dict[str, object]:
    node: object = recipe
    for part in dotted.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _same(saved: object, ours: object) -> bool:
    """Equal values; a list and a tuple of the same items are the same (YAML has no tuples)."""
    if saved == ours:
        return True
    return isinstance(saved, (list, tuple)) and isinstance(ours, Iterable) and list(saved) == list(ours)


def architecture_diff(saved: Mapping[str, object], ours: Mapping[str, object], kind: str) -> list[str]:
    """``section.key: checkpoint A, recipe B`` for each shape-defining key that differs."""
    out = []
    for dotted in ARCH_SECTIONS.get(kind, ("model",)):
        a, b = _section(saved, dotted), _section(ours, dotted)
        for key in sorted(set(a) | set(b)):
            if dotted == "model" and key in RUNTIME_MODEL_KEYS or key not in a or key not in b:
                continue  # a key added since the checkpoint was written keeps its default meaning
            if not _same(a[key], b[key]):
                out.append(f"{dotted}.{key}: checkpoint {a[key]!r}, recipe {b[key]!r}")
    return out


def optimizer_layout(ds_config: Mapping[str, object], precision: str) -> dict[str, object]:
    """What decides the form of a checkpoint's optimizer state: ZeRO stage and precision."""
    return {"zero_stage": zero_stage(ds_config), "precision": precision}


def _saved_layout(info: Mapping[str, object]) -> dict[str, object]:
    """The checkpoint's ``optimizer_layout``; for checkpoints that predate its record, what its
    files show (stage 0 or 1/2, and bf16 for bf16 ZeRO shards)."""
    if "optimizer" in info:
        return dict(as_object(info["optimizer"]))
    shards = [name for name in as_object(info.get("files", {})) if "optim_states" in name]
    if not shards:
        return {"zero_stage": 0}
    return {"zero_stage": 2, "precision": "bf16"} if any(n.startswith("bf16_") for n in shards) else {"zero_stage": 2}


def _describe(layout: Mapping[str, object]) -> str:
    stage = layout["zero_stage"]
    return f"ZeRO stage {'1/2' if stage in (1, 2) else stage}" + (f" in {layout['precision']}" if "precision" in layout else "")


def check_layout(tag_dir: Path, info: Mapping[str, object], layout: Mapping[str, object]) -> None:
    """One-line ``ConfigError`` when this run's ``optimizer_layout`` cannot load the checkpoint's."""
    saved = _saved_layout(info)
    same_stage = (saved["zero_stage"] == 0) == (layout["zero_stage"] == 0)
    same_precision = "precision" not in saved or saved["precision"] == layout["precision"]
    if same_stage and same_precision:
        return
    raise ConfigError(
        f"--resume {tag_dir}: saved with {_describe(saved)}, this run's --deepspeed_config is {_describe(layout)}:"
        " DeepSpeed cannot load optimizer state across that change; resume with a config of the checkpoint's"
        " stage and precision (ds_configs/), or start a new run from its weights with finetune.init"
    )


def check_resumable(
    tag_dir: Path, kind: str, recipe: Mapping[str, object], layout: Mapping[str, object] | None = None
) -> None:
    """One-line ``ConfigError`` unless ``tag_dir`` was saved by a ``kind`` run of this architecture
    (and, given this run's ``optimizer_layout``, one whose optimizer state it can load)."""
    info = read_marker(tag_dir)
    if layout is not None:
        check_layout(tag_dir, info, layout)
    saved_kind, saved = stored_identity(tag_dir, info)
    if saved_kind is not None and saved_kind != kind:
        raise ConfigError(
            f"--resume {tag_dir}: a {saved_kind} checkpoint, this is a {kind} run (start from its weights with"
            " finetune.init instead)"
        )
    diff = architecture_diff(saved if isinstance(saved, dict) else {}, recipe, kind)
    if diff:
        raise ConfigError(
            f"--resume {tag_dir}: saved with another architecture ({'; '.join(diff)}): expected the same keys to"
            " resume (use finetune.init to start from its weights)"
        )


def guard_output(ckpt_dir: Path, lineage: str, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, announce) replacing complete checkpoints of another lineage
    in ``ckpt_dir``. The pointer is read (and validated) here, whatever ``--resume`` says."""
    others = []
    for tag in listed_tags(ckpt_dir):
        try:
            info = read_marker(ckpt_dir / tag)
        except CheckpointError:
            continue  # incomplete or unreadable: nothing complete to lose
        if lineage_of(info, ckpt_dir / tag) != lineage:
            others.append(tag)
    if not others:
        return
    if not overwrite:
        raise ConfigError(
            f"checkpoint.output_dir={str(ckpt_dir.parent)!r} holds {len(others)} complete checkpoint(s) of another"
            f" run (newest {others[0]}) that this run would overwrite: resume them with --resume auto, choose"
            " another checkpoint.output_dir, or pass --overwrite"
        )
    get_logger().warning("--overwrite: complete checkpoints of another run in %s may be replaced or pruned: %s",
                         ckpt_dir, ", ".join(others))
