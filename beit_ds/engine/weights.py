"""Starting weights for fine-tuning and evaluation, from whatever a user has.

``read_weights(path)`` returns a state dict in our layout from any of:

* a DeepSpeed checkpoint of ours: a ``step_*`` folder with ``COMPLETE.json``, the
  ``checkpoints/`` folder holding ``latest.json``, or the run folder above it (the newest complete
  checkpoint). ZeRO shards are consolidated in fp32; no conversion step. Its ``kind`` comes with
  it: which part of a task's model is the backbone is the task's to say (``beit_ds.tasks.weights``);
* a ``.safetensors`` file: our export, timm's or Hugging Face's (told apart by their keys);
* a ``.pth`` / ``.pt`` / ``.bin`` file: unilm / timm checkpoints (``{"model": …}``,
  ``{"module": …}``, ``{"state_dict": …}`` or a bare state dict) and Hugging Face's;
* a Hugging Face ``save_pretrained`` folder (``config.json`` + ``model.safetensors``).

Every failure is a one-line ``ConfigError`` naming ``finetune.init``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from beit_ds.config import ConfigError
from beit_ds.engine import safe_load
from beit_ds.engine.checkpoint import CheckpointError, is_checkpoint_path, resolve
from beit_ds.engine.consolidate import consolidated_state_dict
from beit_ds.engine.saved import stored_identity
from beit_ds.models.convert import from_hf_state_dict, from_timm_state_dict

Tensors = dict[str, torch.Tensor]
WRAPPER_KEYS = ("model", "module", "state_dict")  # unilm / DeepSpeed / Lightning-style containers
HF_MARKERS = ("beit.", "embeddings.", "encoder.layer.", "layers.0.attention.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def checkpoint_dir(path: Path) -> Path | None:
    """The verified DeepSpeed checkpoint ``path`` names (tag, ``checkpoints/`` or run folder), else None."""
    return resolve(path) if is_checkpoint_path(path) else None


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ConfigError(
        f"finetune.init={str(path)!r}: expected a DeepSpeed checkpoint folder, a weights file"
        f" (.safetensors/.pth/.bin) or a folder with {' or '.join(WEIGHT_FILES)}"
    )


def _load_file(path: Path) -> Tensors:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"finetune.init={str(path)!r}: not a readable safetensors file ({err})") from None
    try:  # restricted unpickler: tensors, containers and the allow-listed types (unilm's argparse args)
        obj = safe_load.load(path, "finetune.init")
    except safe_load.UnsafeFileError as err:
        raise ConfigError(str(err)) from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"finetune.init={str(path)!r}: no state dict found (expected one of {WRAPPER_KEYS})"
        )
    return obj


def to_our_layout(sd: Tensors, source: str) -> Tensors:
    """``sd`` from timm / unilm / ours / Hugging Face in our layout (one-line ``ConfigError``)."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    hf = any(k.startswith(HF_MARKERS) for k in sd)
    try:
        return from_hf_state_dict(sd) if hf else from_timm_state_dict(sd)
    except ValueError as err:
        raise ConfigError(f"finetune.init={source!r}: {err}") from None


def read_raw_weights(spec: str) -> tuple[Tensors, str, str | None]:
    """The state dict as the file (or the consolidated checkpoint) holds it, unwrapped from
    unilm / DeepSpeed containers; where it came from; and the checkpoint's ``kind`` (None for a file)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            f"finetune.init={spec!r}: no such file or directory (train or download it first, or set"
            " finetune.init='' to start from random weights)"
        )
    try:
        tag_dir = checkpoint_dir(path) if path.is_dir() else None
        if tag_dir is not None:
            kind = stored_identity(tag_dir)[0] or "pretrain"  # none recorded: the only kind there was
            return consolidated_state_dict(tag_dir), f"DeepSpeed checkpoint {tag_dir}", kind
    except CheckpointError as err:
        raise ConfigError(f"finetune.init={spec!r}: {err}") from None
    file = _weights_file(path)
    return _load_file(file), str(file), None
