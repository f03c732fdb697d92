"""JSON-like data the runtime writes and reads back — ``COMPLETE.json``, ``latest.json``, the
DeepSpeed JSON, a checkpoint's client state — typed as ``dict[str, object]``, and the typed
reads of its values.

A value read from such a mapping is an ``object`` until a read says what it is: ``as_object`` (a
nested mapping) and ``as_int`` (a count, a step, a world size) raise ``TypeError`` for anything
else, as Python's own ``int()`` and indexing do.
"""

from __future__ import annotations

from typing import SupportsIndex, SupportsInt


def as_object(value: object) -> dict[str, object]:
    """``value``, a mapping (a JSON object); ``TypeError`` otherwise."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping (JSON object), got {type(value).__name__}")
    return value


def as_int(value: object) -> int:
    """``int(value)`` of a number or numeric string; ``TypeError`` for anything else."""
    if not isinstance(value, (str, bytes, SupportsInt, SupportsIndex)):
        raise TypeError(f"int() argument must be a string or a number, not '{type(value).__name__}'")
    return int(value)
