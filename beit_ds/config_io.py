"""Recipes on disk: YAML → typed dataclasses, ``section.key=value`` overrides, resolved YAML out.

Precedence (house style rule 3): dataclass defaults ← the ``model.preset`` named in the recipe ←
the recipe's YAML ← command-line overrides. Every unknown key or ill-typed value raises
``ConfigError`` with one line naming ``section.key``, the value and what is expected; every float
value read must be finite (NaN and ±inf are refused) unless its field allows inf
(``config.validate.ALLOW_INF``). Recipes shipped with the package (``beit_ds/recipes/*.yaml``)
can be named without their path. ``inherit: <recipe>`` is read beside the recipe that says it
(a file there wins over a shipped recipe of that name; the working directory is not consulted).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, cast

import yaml

from beit_ds.config import ConfigError
from beit_ds.config.presets import PRESETS
from beit_ds.config.validate import ALLOW_INF, finite
from beit_ds.recipe import KINDS, TrainingRecipe, derive_kind, recipe_root
from beit_ds.safe_write import write_text

RECIPES_DIR = Path(__file__).parent / "recipes"
T = TypeVar("T")


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = _shipped(path)
    if shipped is not None:
        return shipped
    raise ConfigError(f"recipe {str(name_or_path)!r}: no such file, and not a shipped recipe ({_shipped_names()})")


def inherited_path(parent: str | Path, including: Path) -> Path:
    """The recipe ``inherit: parent`` in the file ``including`` names: a relative path is read
    beside ``including`` (never in the working directory); a bare name that is no file there is
    the shipped recipe of that name. A file beside the recipe wins over a shipped one."""
    path = Path(parent)
    beside = path if path.is_absolute() else including.parent / path
    if beside.is_file():
        return beside
    shipped = _shipped(path) if len(path.parts) == 1 else None
    if shipped is not None:
        return shipped
    raise ConfigError(
        f"{including}: inherit {str(parent)!r}: no such file ({beside}), and not a shipped recipe ({_shipped_names()})"
    )


def _shipped(path: Path) -> Path | None:
    shipped = RECIPES_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    return shipped if shipped.is_file() else None


def _shipped_names() -> str:
    return ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in ``path``; a parse error or a non-mapping is a one-line ``ConfigError``."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``section.key=value`` set (sections created as needed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _coerce(value: Any, annotation: Any, where: str, allow_inf: bool = False) -> Any:
    """``value`` as ``annotation`` (int, float, bool, str, tuple, Optional/Union of those); a float
    must be finite unless ``allow_inf`` (the field's ``validate.ALLOW_INF`` metadata)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where, allow_inf)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is tuple and typing.get_args(annotation)[-1:] == (Ellipsis,):  # tuple[X, ...]: any length
        (arg, _) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list")
        return tuple(_coerce(v, arg, where, allow_inf) for v in value)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}={value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, where, allow_inf) for v, a in zip(value, args))
    if origin is list:
        (arg,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list")
        return [_coerce(v, arg, where, allow_inf) for v in value]
    if annotation is float:
        number = _float(value, where)
        finite(where, number, allow_inf)
        return number
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected an integer")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}={value!r}: expected a string")
    if annotation is Any:
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{where}={value!r}: expected a number")


def build_dataclass(cls: type[T], data: dict[str, Any] | None, where: str = "", base: Any = None) -> T:
    """``cls(**data)`` with nested sections, coerced values and unknown keys rejected. Keys ``data``
    leaves out take ``base``'s values when given, else the defaults; a nested section starts from
    the default its parent declares (``field(default_factory=...)``), so a recipe root's own
    section defaults (a linear probe's ``finetune.head: reset``, segmentation's
    ``finetune.label_smoothing: 0``) hold whether or not the recipe writes that section."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}={data!r}: expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]  # T is a dataclass
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key (expected one of {known})")
    kwargs = {k: getattr(base, k) for k in fields if k not in data} if base is not None else {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, name, _section_default(fields[key], base))
        else:
            kwargs[key] = _coerce(value, hint, name, bool(fields[key].metadata.get(ALLOW_INF)))
    return cls(**kwargs)


def _section_default(f: dataclasses.Field[Any], base: Any) -> Any:
    """What a nested section starts from: the parent's value of it, else the field's default
    (None — the section class's own defaults — when that default is no valid section by itself,
    e.g. a data section whose default names no path)."""
    if base is not None:
        return getattr(base, f.name)
    if f.default_factory is dataclasses.MISSING:
        return None if f.default is dataclasses.MISSING else f.default
    try:
        return f.default_factory()
    except ConfigError:
        return None


def stored_recipe(cls: type[T], data: dict[str, Any]) -> T:
    """The recipe a checkpoint stored, built as ``cls``: the keys its root has retired since
    (``TrainingRecipe.retired``, which had no effect there) are dropped; any other unknown key is
    still a ``ConfigError``."""
    data = copy.deepcopy(data)  # the stored mapping stays as read
    for dotted in getattr(cls, "retired", ()):
        section, _, key = dotted.rpartition(".")
        node = _lookup(data, section) if section else data
        if isinstance(node, dict):
            node.pop(key, None)
    return build_dataclass(cls, data)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass tree as plain YAML-safe types (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def save_yaml(obj: Any, path: Path) -> None:
    """Write the resolved config ``obj`` as YAML (the form ``load_recipe`` reads back; a recipe's
    ``kind`` first); a link at ``path`` is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = {"kind": obj.kind} if getattr(obj, "kind", "") else {}
    write_text(path, yaml.safe_dump({**kind, **to_dict(obj)}, sort_keys=False))


def _resolve_preset(data: dict[str, Any]) -> dict[str, Any]:
    """Expand ``model.preset: NAME`` into that preset's keys, under the recipe's own keys."""
    model = data.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return data
    model = dict(model)
    name = model.pop("preset")
    if name not in PRESETS:
        raise ConfigError(f"model.preset={name!r}: expected one of {', '.join(sorted(PRESETS))}")
    return {**data, "model": {**dataclasses.asdict(PRESETS[name]), **model}}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def read_recipe(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's mapping with ``inherit: <recipe>`` resolved (the child's keys win; the parent is
    found by ``inherited_path``: beside the including file, else a shipped recipe)."""
    path = recipe_path(name_or_path) if not seen else Path(name_or_path)
    if path.resolve() in (p.resolve() for p in seen):
        raise ConfigError(f"{path}: inherit cycle through {', '.join(str(p) for p in seen)}")
    data = read_yaml(path)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: inherit={parent!r}: expected a recipe file name or path")
    return _merge(read_recipe(inherited_path(parent, path), (*seen, path)), data)


def load_recipe(cls: type[T] | None, name_or_path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """The recipe from a YAML file (or defaults when None) plus CLI overrides. Its root is the one
    its ``kind`` names (``recipe.derive_kind``: stated, else derived once from ``cls``, the root a
    command expects); ``cls=None`` takes any kind."""
    data = read_recipe(name_or_path) if name_or_path is not None else {}
    data = _resolve_preset(apply_overrides(data, list(overrides)))
    where = str(name_or_path) if name_or_path is not None else "(defaults)"
    expected = cls if cls is None or issubclass(cls, TrainingRecipe) else None
    if expected is not None or "kind" in data or cls is None:
        root: type[Any] = recipe_root(derive_kind(expected, data, where), expected, where)
        data = {k: v for k, v in data.items() if k != "kind"}
    else:
        root = cls
    try:
        recipe = build_dataclass(root, data)
        derived = recipe.derived() if hasattr(recipe, "derived") else {}
        for key, (value, fact) in derived.items():
            given = _lookup(data, key)
            if given is _ABSENT:
                data = apply_overrides(data, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
            elif given != value:
                raise _stated_twice(key, given, value, fact)
        return cast(T, build_dataclass(root, data) if derived else recipe)
    except TypeError as err:  # a section given as a scalar, etc.
        raise ConfigError(f"recipe {name_or_path}: {err}") from None


def recipe_kinds() -> dict[str, list[str]]:
    """``{kind: [shipped recipe names]}``: what ``--help`` lists."""
    out: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        try:
            kind = derive_kind(None, read_recipe(path), str(path))
        except ConfigError:
            continue
        out[kind].append(path.stem)
    return out


_ABSENT = object()


def _stated_twice(key: str, given: Any, value: Any, fact: str) -> ConfigError:
    return ConfigError(f"{key}={given!r}: is {fact} = {value!r}; leave {key} out (it is derived)")


def check_derived(recipe: Any) -> None:
    """One-line ``ConfigError`` unless every value ``recipe.derived()`` names holds (recipes built
    in code rather than by ``load_recipe``)."""
    derived = recipe.derived() if hasattr(recipe, "derived") else {}
    data = to_dict(recipe)
    for key, (value, fact) in derived.items():
        given = _lookup(data, key)
        if given != value:
            raise _stated_twice(key, given, value, fact)


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def recipe_parser(description: str, default_recipe: str | None) -> argparse.ArgumentParser:
    """``--config`` (a recipe path or shipped name), the ``deepspeed`` launcher's ``--local_rank``
    (the rank itself is read from the environment) and trailing ``section.key=value`` overrides."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_recipe, help=f"recipe YAML path or shipped name (default: {default_recipe})")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    return parser
