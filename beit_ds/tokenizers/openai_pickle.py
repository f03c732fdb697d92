"""Read OpenAI's DALL-E weight files without the ``dall_e`` package and without executing them.

OpenAI distributes the tokenizer (the seed's §2.1 dVAE) as ``encoder.pkl`` / ``decoder.pkl``:
``torch.save`` of whole ``dall_e.encoder.Encoder`` / ``dall_e.decoder.Decoder`` modules, so a
plain ``torch.load`` needs that package importable and runs arbitrary pickled code. Here the
pickle is read by a restricted unpickler: ``dall_e.*`` and ``torch.nn.modules.*`` classes become
inert ``PickledObject`` placeholders that only record their state, a short allow-list of
tensor-rebuilding functions and containers is admitted, and anything else is refused. The
placeholders' tensors are then flattened into an ordinary state dict.
"""

from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

_PLACEHOLDER_PREFIXES = ("dall_e.", "torch.nn.modules.")


class PickledObject:
    """Stand-in for a pickled class instance: records constructor args and ``__setstate__``."""

    pickled_class = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # Objects with __slots__ pickle (dict_state, slot_state); modules only have the former.
        self.state = state[0] if isinstance(state, tuple) else state


_placeholders: dict[str, type[PickledObject]] = {}


def _placeholder(qualname: str) -> type[PickledObject]:
    if qualname not in _placeholders:
        name = qualname.rsplit(".", 1)[-1]
        _placeholders[qualname] = type(name, (PickledObject,), {"pickled_class": qualname})
    return _placeholders[qualname]


def _allowed_globals() -> dict[str, Any]:
    allowed: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "torch.device": torch.device,
        "torch.Size": torch.Size,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    }
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64):
        allowed[str(dtype)] = dtype
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the allow-list above; ``dall_e.*`` / ``torch.nn.modules.*`` -> placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        qualname = f"{module}.{name}"
        if module.startswith(_PLACEHOLDER_PREFIXES) or module in {"dall_e", "torch.nn.modules"}:
            return _placeholder(qualname)
        allowed = _allowed_globals()
        if qualname in allowed:
            return allowed[qualname]
        raise pickle.UnpicklingError(f"refers to {qualname}, which a DALL-E weights file never does")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="beit_ds_restricted_pickle", Unpickler=RestrictedUnpickler, load=_restricted_load
)
"""A ``pickle_module`` for ``torch.load`` that never imports or runs pickled code."""


def module_state_dict(obj: PickledObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict()`` the pickled module would have had: parameters and persistent
    buffers of it and its children, keyed by dotted path."""
    state = obj.state if isinstance(obj.state, dict) else {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        return torch.load(path, map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{path}: not a DALL-E weights file (a pickled dall_e module or a state dict): {reason}"
        ) from None


def load_weights(path: str | Path, expected_class: str, required: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path``: OpenAI's pickled ``expected_class`` module (e.g.
    ``"dall_e.encoder.Encoder"``), a ``torch.save``d state dict, or a ``.safetensors`` file.

    Raises ``FileNotFoundError`` for a missing path and a one-line ``ValueError`` when the file
    holds something else (another class, a state dict without ``required`` key, garbage).
    """
    path = Path(path)
    kind = expected_class.rsplit(".", 1)[-1].lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected DALL-E {kind} weights, e.g. {kind}.pkl)")
    obj = _read(path)
    if isinstance(obj, PickledObject):
        if obj.pickled_class != expected_class:
            raise ValueError(f"{path}: holds a pickled {obj.pickled_class}, expected a {expected_class}")
        obj = module_state_dict(obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: holds a {type(obj).__name__}, expected a {expected_class} or its state dict"
        )
    if required not in obj:
        raise ValueError(f"{path}: state dict has no {required!r}: not DALL-E {kind} weights")
    return dict(obj)
