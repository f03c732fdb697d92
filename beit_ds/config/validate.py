"""The one public set of validators of configuration values (house style rule 3).

Each raises ``ConfigError`` with one line naming ``section.key``, the value and what is expected.
Torch-free, like every module of ``beit_ds.config``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

ALLOW_INF = "allow_inf"
"""Field metadata key (``field(metadata={ALLOW_INF: True})``): this float key accepts ±inf; every
other float key of every section must be finite (``finite``, applied by ``config_io`` to each float
value it reads, nested ones included). NaN is never accepted."""


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message is one line."""


def finite(where: str, value: float, allow_inf: bool = False) -> None:
    """One-line ``ConfigError`` naming ``where`` (``section.key``) unless ``value`` is finite
    (or, with ``allow_inf``, ±inf)."""
    ok = math.isfinite(value) or (allow_inf and math.isinf(value))
    if not ok:
        raise ConfigError(f"{where}={value!r}: expected a finite number")


def _real(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def expect(ok: bool, section: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{key}={value!r}: expected {expected}")


def choice(section: str, key: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    expect(value in choices, section, key, value, "one of " + ", ".join(map(repr, choices)))


def positive_int(section: str, key: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    expect(ok, section, key, value, "a positive integer")


def fraction(section: str, key: str, value: Any, lo_open: bool = False) -> None:
    ok = _real(value)
    ok = ok and (0.0 < value < 1.0 if lo_open else 0.0 <= value < 1.0)
    interval = "(0, 1)" if lo_open else "[0, 1)"
    expect(ok, section, key, value, f"a number in {interval}")


def pair(section: str, key: str, value: Any) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(_real(v) for v in value)
    expect(ok, section, key, value, "a list of two finite numbers")
    return float(value[0]), float(value[1])


def non_negative_int(section: str, key: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    expect(ok, section, key, value, "an integer >= 0")


def non_negative_number(section: str, key: str, value: Any, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and _real(value) and value >= 0
    expect(ok, section, key, value, "an integer >= 0" if integer else "a number >= 0")


def number(section: str, key: str, value: Any, lo: float, hi: float, expected: str) -> None:
    """``value`` in ``[lo, hi]`` and finite (an infinite ``hi`` bounds nothing but NaN and inf)."""
    ok = _real(value) and lo <= value <= hi
    expect(ok, section, key, value, expected)
