"""Tensor shapes of a ``torch.save`` zip file read without torch and without running its pickle:
what a recipe needs to know of a ``.pth`` (e.g. the vocabulary of unilm's released VQ-KD
tokenizer) before any process group starts. Torch-free, like every module of ``beit_ds.config``.

The pickle is read by an unpickler that resolves only the names a state dict holds (tensor
rebuilds become their shapes, storages and ``argparse.Namespace`` inert placeholders, ordered
dicts plain ones); any other global makes the file unreadable here (``None``), never imported.
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

Shape = tuple[int, ...]


def _shape(storage: object, offset: int, size: Shape, *rest: object) -> Shape:
    return tuple(size)


def _parameter(data: object, *rest: object) -> object:
    return data


class _Placeholder:
    """Stands in for a storage type or an ``argparse.Namespace`` (state set by BUILD, unused)."""

    def __init__(self, *args: object) -> None:
        pass


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _shape
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _parameter
        if module == "collections" and name == "OrderedDict":
            return dict
        if (module == "torch" and name.endswith("Storage")) or (module, name) == ("argparse", "Namespace"):
            return _Placeholder
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: object) -> object:
        return None  # a storage: its bytes are never read


def torch_zip_shapes(path: str, wrappers: tuple[str, ...] = ("model", "state_dict")) -> dict[str, Shape] | None:
    """``{key: shape}`` of the state dict in the torch zip file ``path`` (unwrapped from the first
    of ``wrappers`` it holds); None when the file is missing, no zip-format torch file, or holds
    anything else than a state dict and plain containers."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            with archive.open(member) as f:
                obj = _ShapeUnpickler(f).load()
    except (OSError, StopIteration, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AttributeError,
            TypeError, ValueError, IndexError, KeyError):
        return None
    for key in wrappers:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        return None
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, tuple)}
