"""Every float key of every recipe section refuses NaN and infinity with one line naming it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from beit_ds.config import ConfigError
from beit_ds.config.dino import DinoConfig
from beit_ds.config.validate import ALLOW_INF
from beit_ds.config_io import load_recipe
from beit_ds.recipe import (
    DinoPretrainRecipe,
    FinetuneRecipe,
    LinearProbeRecipe,
    SegmentationRecipe,
    TokenizerRecipe,
)

# every root, with the overrides it needs to build at all
ROOTS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (DinoPretrainRecipe, ()),
    (FinetuneRecipe, ()),
    (LinearProbeRecipe, ()),
    (TokenizerRecipe, ()),
    (SegmentationRecipe, ("data.path=x",)),
)


def _has_float(hint: typing.Any) -> bool:
    return hint is float or any(_has_float(a) for a in typing.get_args(hint))


def _float_keys(cls: type, prefix: str = "") -> list[tuple[str, typing.Any, dataclasses.Field, type]]:
    """``(section.key, type hint, field, its dataclass)`` of every float field below the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], f"{prefix}{f.name}"
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += _float_keys(hint, key + ".")
        elif _has_float(hint):
            out.append((key, hint, f, cls))
    return out


def _cases() -> list[tuple[type, tuple[str, ...], str, typing.Any]]:
    seen: dict[tuple[type, str], tuple[type, tuple[str, ...], str, typing.Any]] = {}
    for root, base in ROOTS:
        for key, hint, f, owner in _float_keys(root):
            if f.metadata.get(ALLOW_INF):
                continue  # no key allows inf today; one that does is tested with its own bound
            seen.setdefault((owner, f.name), (root, base, key, hint))
    return list(seen.values())


def _value(hint: typing.Any, bad: str) -> str:
    """``bad`` in the shape ``hint`` asks for: a scalar, or the first item of a list."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        n = 1 if args[-1:] == [Ellipsis] else len(args)
        return "[" + ", ".join([bad] + ["1.0"] * (n - 1)) + "]"
    return bad


CASES = _cases()


def test_every_section_with_float_keys_is_covered() -> None:
    sections = {key.rsplit(".", 1)[0] for _, _, key, _ in CASES}
    assert {
        "optim",
        "schedule",
        "dino",
        "data",
        "data.transform",
        "model",
        "masking",
        "mim",
        "finetune",
        "augment",
        "tokenizer.dvae",
        "decode",
        "inference",
    } <= sections
    assert len(CASES) >= 59  # the float fields of the sections today (a new one joins by itself)


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("root, base, key, hint", CASES, ids=[f"{c[0].__name__}:{c[2]}" for c in CASES])
def test_float_keys_refuse_nan_and_inf(root, base, key, hint, bad) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe(root, None, [*base, f"{key}={_value(hint, bad)}"])
    message = str(err.value)
    assert message.startswith(f"{key}=") and "\n" not in message, message


@pytest.mark.parametrize(
    "override, expected",
    [
        ("dino.loss_weight=1001", "dino.loss_weight=1001.0: expected a number in [0, 1000]"),
        (
            "dino.warmup_teacher_temp_epochs=1e6",
            "dino.warmup_teacher_temp_epochs=1000000.0: expected epochs in",
        ),
        ("dino.freeze_last_layer_epochs=-1", "dino.freeze_last_layer_epochs=-1.0: expected epochs in"),
    ],
)
def test_dino_bounds(override, expected) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_recipe(DinoPretrainRecipe, None, [override])
    assert expected in str(err.value)


@pytest.mark.parametrize("key", ["loss_weight", "warmup_teacher_temp_epochs", "freeze_last_layer_epochs"])
def test_dino_section_built_in_code_refuses_inf(key) -> None:
    with pytest.raises(ConfigError, match=f"dino.{key}=inf"):
        DinoConfig(**{key: float("inf")})
