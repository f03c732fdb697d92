"""Loading torch files a user points us at without running code from them.

A ``.pt`` file is a pickle: full unpickling (``weights_only=False``, what DeepSpeed uses for every
checkpoint file it reads) runs whatever an object's ``__reduce__`` names, e.g. ``os.system``.
Everything beit_ds reads from a user-given path therefore goes through PyTorch's restricted
unpickler (``weights_only=True``) with an explicit allow-list of the few non-tensor types our own
checkpoints hold:

* DeepSpeed's optimizer states: ``LossScaler`` / ``DynamicLossScaler`` (plain attribute bags),
  ``ZeroStageEnum`` and the ``fragment_address`` named tuple;
* our per-rank RNG files: numpy's Mersenne-Twister key (``ndarray`` / ``dtype`` reconstruction);
* unilm's ``save_model`` output: ``'args': argparse.Namespace`` (an attribute bag).

``weights_only_loading()`` forces the restricted unpickler on every ``torch.load`` inside it,
DeepSpeed's included (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, read by torch on each call), so the engine
load, ZeRO consolidation and the universal conversion are covered without patching DeepSpeed.
``unsafe_globals(path)`` lists what a file would import, without unpickling it, so a refusal can
name the file and the offending global before anything is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class UnsafeFileError(ValueError):
    """A file holds objects outside the allow-list (or is no torch file); nothing was executed."""


# an allowed global: a class, or numpy's array reconstructor ``_reconstruct(subtype, shape, dtype)``
Global = type | Callable[[type, tuple[int, ...], bytes], object]


def _deepspeed_types() -> list[Global]:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _numpy_types() -> list[Global]:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2 (numpy.core before)

    reconstruct = _reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def allowed_globals() -> list[Global]:
    """The types our checkpoints (and unilm's) may hold besides tensors and builtins."""
    return [*_deepspeed_types(), *_numpy_types(), argparse.Namespace]


def _allowed_names() -> set[str]:
    return {f"{t.__module__}.{t.__qualname__}" for t in allowed_globals()}


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` inside (DeepSpeed's too) uses the restricted unpickler with our allow-list."""
    previous = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = previous


def unsafe_globals(path: Path) -> list[str]:
    """Globals the pickle in ``path`` names that the allow-list does not hold (read, not run).
    A file that is no zip-format torch file is reported as ``["<not a torch zip file>"]``."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - legacy / broken / crafted: not a file our checkpoints contain
        return ["<not a torch zip file>"]
    allowed = _allowed_names()
    return [name for name in found if name not in allowed]


def check_files(folder: Path, what: str) -> None:
    """Raise ``UnsafeFileError`` naming the first ``*.pt`` file under ``folder`` that would import
    something outside the allow-list."""
    for path in sorted(folder.rglob("*.pt")):
        bad = unsafe_globals(path)
        if bad:
            raise UnsafeFileError(
                f"{what} {folder}: {path.relative_to(folder)} holds pickled objects outside the allow-list"
                f" ({', '.join(bad[:3])}); refusing to load it (files beit_ds writes never do)"
            )


def _reason(err: Exception) -> str:
    """The one informative line of torch's weights-only error (which global, which opcode)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines[1:] if not line.startswith("Check the documentation")]
    return useful[0] if useful else type(err).__name__


def load(path: Path, what: str) -> object:
    """``torch.load`` of ``path`` on CPU with the restricted unpickler; a file that needs more than
    the allow-list, or is no torch file, is a one-line ``UnsafeFileError`` naming ``what``."""
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err) and "GLOBAL" in str(err):
            raise UnsafeFileError(
                f"{what}={str(path)!r}: refused: it holds pickled objects outside the allow-list ({_reason(err)})"
            ) from None
        raise UnsafeFileError(f"{what}={str(path)!r}: not a readable torch file ({_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - random bytes, truncated zips: a user input error
        raise UnsafeFileError(f"{what}={str(path)!r}: not a readable torch file ({type(err).__name__})") from None
