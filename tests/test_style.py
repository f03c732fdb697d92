"""The house rules as a test (HOUSE_STYLE rules 2, 13, 26 and 30): size budgets, DeepSpeed only in
``engine/``, an allowed-imports table per floor, and no tracker history in code.

Everything here reads source with :mod:`ast` and imports nothing of the project, so it runs in
seconds. Each rule is one test whose failure lists every offender as ``file:line``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "beit_ds"
CHECKED_DIRS = (PACKAGE, "launch", "bench", "experiments")
TEXT_SUFFIXES = (".py", ".sh", ".sbatch", ".yaml", ".yml")

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50
MAX_PARAMETERS = 8

# Floors of the package, bottom to top: a module imports only from its own floor or a lower one.
# Keys are the first part of a module's name under ``beit_ds`` (a subpackage or a top-level module).
FLOORS = ("foundation", "models", "data", "runtime", "pictures", "tasks", "door")
FLOOR_OF = {
    **dict.fromkeys(
        (
            "config",
            "config_io",
            "recipe",
            "masking",
            "schedules",
            "distributed",
            "processes",
            "safe_write",
            "assets",
            "logger",
            "metrics",
            "optim",
            "artifacts",
        ),
        "foundation",
    ),
    **dict.fromkeys(("models", "tokenizers"), "models"),
    **dict.fromkeys(("data", "segmentation"), "data"),
    "engine": "runtime",
    "visualize": "pictures",
    "tasks": "tasks",
    **dict.fromkeys(("cli", "__init__"), "door"),
}
DEEPSPEED_HOME = f"{PACKAGE}/engine/"

ISSUE_NUMBER = re.compile(r"\bissues?[\s#_-]*\d+|\(#\d+\)", re.IGNORECASE)


def _files(*suffixes: str) -> list[Path]:
    found: list[Path] = []
    for folder in CHECKED_DIRS:
        found += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file() and p.suffix in suffixes]
    return [p for p in found if "__pycache__" not in p.parts]


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _report(rule: str, offenders: list[str]) -> str:
    return f"{len(offenders)} offender(s) of {rule}:\n  " + "\n  ".join(offenders)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameter_count(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = func.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return len([n for n in names if n not in ("self", "cls")])


def test_files_within_line_budget() -> None:
    offenders = []
    for path in _files(".py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_FILE_LINES:
            offenders.append(f"{_rel(path)}: {lines} lines > {MAX_FILE_LINES}")
    assert not offenders, _report("the file budget", offenders)


def test_functions_within_line_budget() -> None:
    offenders = []
    for path in _files(".py"):
        for func in _functions(_tree(path)):
            lines = func.end_lineno - func.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                offenders.append(
                    f"{_rel(path)}:{func.lineno} {func.name}: {lines} lines > {MAX_FUNCTION_LINES}"
                )
    assert not offenders, _report("the function budget", offenders)


def test_functions_within_parameter_budget() -> None:
    offenders = []
    for path in _files(".py"):
        for func in _functions(_tree(path)):
            count = _parameter_count(func)
            if count > MAX_PARAMETERS:
                offenders.append(
                    f"{_rel(path)}:{func.lineno} {func.name}: {count} parameters > {MAX_PARAMETERS}"
                )
    assert not offenders, _report("the parameter budget (use a config object)", offenders)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve_from(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, function-local ones included; a
    ``from package import submodule`` names the submodule, and a literal ``import_module("...")``
    counts too."""
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, path)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if _is_module(full) else base
        elif isinstance(node, ast.Call) and _called_name(node.func) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _called_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _floor(module: str) -> str:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in FLOOR_OF, f"{module}: no floor in FLOOR_OF; give beit_ds.{key} one in tests/test_style.py"
    return FLOOR_OF[key]


def test_deepspeed_only_in_engine() -> None:
    offenders = []
    for path in _files(".py"):
        if _rel(path).startswith(DEEPSPEED_HOME):
            continue
        for line, module in _imports(path):
            if module == "deepspeed" or module.startswith("deepspeed."):
                offenders.append(f"{_rel(path)}:{line} imports {module}")
    assert not offenders, _report(f"'DeepSpeed lives in {DEEPSPEED_HOME}'", offenders)


def test_every_package_module_has_a_floor() -> None:
    package = ROOT / PACKAGE
    keys = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/__init__.py")}
    missing = sorted(keys - FLOOR_OF.keys())
    assert not missing, f"beit_ds modules without a floor in tests/test_style.py FLOOR_OF: {missing}"


def test_imports_never_run_up_a_floor() -> None:
    offenders = []
    for path in _files(".py"):
        if not _rel(path).startswith(f"{PACKAGE}/"):
            continue
        own = _floor(_module_name(path))
        for line, module in _imports(path):
            if module != PACKAGE and not module.startswith(f"{PACKAGE}."):
                continue
            target = _floor(module)
            if FLOORS.index(target) > FLOORS.index(own):
                offenders.append(f"{_rel(path)}:{line} imports {module}: floor {own} -> {target} (up)")
    assert not offenders, _report(f"the floor order {' < '.join(FLOORS)}", offenders)


def test_no_issue_numbers_in_code() -> None:
    offenders = []
    for path in _files(*TEXT_SUFFIXES):
        text = path.read_text(encoding="utf-8")
        for match in ISSUE_NUMBER.finditer(text):  # a citation may wrap onto the next line
            number = text.count("\n", 0, match.start()) + 1
            line = text.splitlines()[number - 1].strip()
            offenders.append(f"{_rel(path)}:{number} {' '.join(match.group(0).split())!r}: {line[:90]}")
    assert not offenders, _report("'the commit log holds tracker history, code does not'", offenders)


def test_checker_sees_local_and_hidden_imports(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        "import importlib\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import deepspeed\n\n\n"
        "def f():\n    from beit_ds.tasks import registry\n    from beit_ds import create_model\n"
        "    importlib.import_module('beit_ds.cli')\n"
    )
    found = {module for _, module in _imports(source)}
    assert {"deepspeed", "beit_ds.tasks.registry", "beit_ds", "beit_ds.cli"} <= found, found
    assert [_floor(m) for m in ("beit_ds.tasks.registry", "beit_ds", "beit_ds.config.presets")] == [
        "tasks",
        "door",
        "foundation",
    ]


def test_test_file_names_are_unique() -> None:
    """pytest imports test files by their base name (no packages under tests/): two files of one
    name stop the whole run at collection."""
    names: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {name: where for name, where in names.items() if len(where) > 1}


def test_tests_wait_only_through_wait_for() -> None:
    """A test waits for the condition it asserts on (``tests/conftest.py::wait_for``), never for a
    fixed time: the one ``sleep`` call in the tests' own code is wait_for's poll. (Scripts that tests
    write for a child process are strings to the parser: a child may hold itself alive.)"""
    conftest = ROOT / "tests" / "conftest.py"
    wait_for = next(n for n in ast.parse(conftest.read_text()).body
                    if isinstance(n, ast.FunctionDef) and n.name == "wait_for")
    allowed = {(conftest, line) for line in range(wait_for.lineno, (wait_for.end_lineno or 0) + 1)}
    sleeps = [f"{path.relative_to(ROOT)}:{node.lineno}"
              for path in sorted((ROOT / "tests").rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "sleep"
              and (path, node.lineno) not in allowed]
    assert sleeps == []
