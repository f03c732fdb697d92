"""What a run leaves on disk: weights files written so that a planted link is never written
through (``safe_write``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from beit_ds.safe_write import replacing


def save_tensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """``sd`` as a safetensors file at ``path`` (tensors made contiguous), written beside it and
    renamed into place: a link at ``path`` is replaced, never written through."""
    with replacing(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, tmp, metadata=metadata)
    return path


def save_weights(sd: dict[str, torch.Tensor], path: Path, **metadata: str) -> Path:
    """``sd`` as a safetensors file at ``path`` (``save_tensors``), tagged ``format=beit_ds``."""
    return save_tensors(sd, path, {"format": "beit_ds", **metadata})
