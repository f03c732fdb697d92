"""What a run leaves on disk, each folder with one owner that names its paths (house rule 28).

* ``RunDir``: every path of a run folder (``checkpoint.output_dir``): ``checkpoints/``,
  ``export/``, ``recipe.yaml``, ``metrics.jsonl``, ``tensorboard/``, ``overlays/``,
  ``train.log``, ``.run.lock``.
* ``ExportDir``: an export folder, written file by file (never through a planted link: every file
  goes through ``safe_write``, every sub-folder must be a folder) and closed by its manifest
  ``export.json`` — ``{"kind", "format_version", "files", "source"}`` — that loading dispatches
  on (``beit_ds.tasks.exported.load_export``). The manifest is written last: an export that did
  not finish has none.
* ``save_tensors`` / ``save_weights``: one safetensors file, written beside its name and renamed.

This module imports neither the runtime nor the tasks (and torch only when a file is written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from beit_ds.config import ConfigError
from beit_ds.safe_write import make_dir, replacing, write_text

if TYPE_CHECKING:
    import torch

CHECKPOINTS = "checkpoints"
IMPORTED = "imported"  # checkpoints/imported/: universal forms of other runs' checkpoints
MANIFEST = "export.json"
RECIPE_JSON = "recipe.json"
WEIGHTS = "model.safetensors"  # an export's model in our layout (unilm's)
EMA_WEIGHTS = "model_ema.safetensors"
TOKENIZER_WEIGHTS = "tokenizer.safetensors"  # a tokenizer export's dVAE (save_dvae)
FORMAT_VERSION = 1  # of export.json; a reader refuses a newer one


@dataclass(frozen=True, init=False)
class RunDir:
    """The paths of the run folder ``root``, and nothing else."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_checkpoint(cls, tag_dir: str | Path) -> RunDir:
        """The run folder a checkpoint folder belongs to: ``<run>/checkpoints/step_X`` (or its
        ``step_X_universal`` sibling), or ``<run>/checkpoints/imported/<name>`` (the universal form
        of another run's checkpoint, converted for this run)."""
        ckpt_dir = Path(tag_dir).parent
        if ckpt_dir.name == IMPORTED and ckpt_dir.parent.name == CHECKPOINTS:
            ckpt_dir = ckpt_dir.parent
        return cls(ckpt_dir.parent)

    @property
    def checkpoints(self) -> Path:
        """``step_*`` folders and ``latest.json`` (``engine/checkpoint.py``)."""
        return self.root / CHECKPOINTS

    @property
    def imported(self) -> Path:
        """Universal forms of other runs' checkpoints this run resumed from."""
        return self.checkpoints / IMPORTED

    @property
    def export(self) -> Path:
        """The export of the run's last checkpoint (``ExportDir``)."""
        return self.root / "export"

    @property
    def recipe(self) -> Path:
        """The resolved recipe, YAML."""
        return self.root / "recipe.yaml"

    @property
    def metrics(self) -> Path:
        """The ``MetricWriter``'s JSON lines."""
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def overlays(self) -> Path:
        """Segmentation prediction overlays, one PNG per evaluation."""
        return self.root / "overlays"

    @property
    def log(self) -> Path:
        """Rank 0's log file."""
        return self.root / "train.log"

    @property
    def lock(self) -> Path:
        """One job per run folder (``engine/run_lock.py``)."""
        return self.root / ".run.lock"


@dataclass(frozen=True)
class Manifest:
    """An export's ``export.json``: its ``kind``, format version, files (relative, ``/``-separated)
    and the checkpoint it came from."""

    kind: str
    files: tuple[str, ...]
    format_version: int = FORMAT_VERSION
    source: str | None = None


class ExportDir:
    """An export folder ``path``: ``create()``, ``write_*`` / ``sub`` what the kind exports, then
    ``finish(kind, recipe, source)``; ``read_manifest()`` / ``read_recipe()`` / ``read_weights()``
    read one back (one-line ``ConfigError`` naming the folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files: dict[str, None] = {}  # written so far, in order (shared with sub-folders)
        self._prefix = ""  # of a sub-folder's files in the manifest

    # --- writing ------------------------------------------------------------------------------
    def create(self) -> ExportDir:
        """Make the folder (it may be a link to a folder: a user named it) and drop a manifest an
        earlier export left, so that the folder has one only once this export has finished."""
        make_dir(self.path, link_ok=True)
        if (self.path / MANIFEST).is_symlink() or (self.path / MANIFEST).exists():
            (self.path / MANIFEST).unlink()
        return self

    def sub(self, name: str) -> ExportDir:
        """The sub-folder ``name`` (made; a link there is refused), its files in this manifest."""
        view = ExportDir(make_dir(self._target(name)))
        view._files, view._prefix = self._files, f"{self._prefix}{name}/"
        return view

    def write_file(self, name: str, write: Callable[[Path], object]) -> Path:
        """``write(path)`` writes the file ``name`` (itself, never through a link: ``safe_write``)."""
        path = self._target(name)
        write(path)
        self._files[self._prefix + name] = None
        return path

    def write_tensors(self, name: str, sd: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        """``sd`` as the safetensors file ``name`` (``save_tensors``)."""
        return self.write_file(name, lambda path: save_tensors(sd, path, metadata))

    def write_weights(self, name: str, sd: dict[str, torch.Tensor], **metadata: str) -> Path:
        """``sd`` as the safetensors file ``name`` in our format (``save_weights``)."""
        return self.write_file(name, lambda path: save_weights(sd, path, **metadata))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_file(name, lambda path: write_text(path, json.dumps(obj, indent=1, default=repr)))

    def finish(self, kind: str, recipe: dict[str, Any] | None = None, source: str | None = None) -> Path:
        """``recipe.json`` (``recipe``, when given) and then the manifest naming ``kind``, every
        file written and the ``source`` checkpoint; the manifest's path."""
        if self._prefix:
            raise ValueError(f"{self.path}: a sub-folder of an export has no manifest of its own")
        if recipe is not None:
            self.write_json(RECIPE_JSON, recipe)
        manifest = {"kind": kind, "format_version": FORMAT_VERSION, "files": sorted(self._files)}
        if source is not None:
            manifest["source"] = source
        return write_text(self.path / MANIFEST, json.dumps(manifest, indent=1))

    def _target(self, name: str) -> Path:
        """``path / name`` for a relative ``name`` inside the folder (parents made, links refused)."""
        parts = _inside(name)
        if not parts:
            raise ValueError(f"{self.path}: {name!r} is not a path inside the export")
        for depth in range(1, len(parts)):
            make_dir(self.path.joinpath(*parts[:depth]))
        return self.path.joinpath(*parts)

    # --- reading ------------------------------------------------------------------------------
    @property
    def has_manifest(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def read_manifest(self) -> Manifest:
        """The folder's ``export.json``, checked: a JSON object with a kind, a format version this
        code reads and the files it lists present in the folder."""
        path = self.path / MANIFEST
        if not path.is_file():
            raise ConfigError(f"{self.path}: no {MANIFEST} (not an export folder of beit_ds)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: unreadable export manifest ({type(err).__name__})") from None
        return self._checked(path, data)

    def _checked(self, path: Path, data: Any) -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or not data["kind"]:
            raise ConfigError(f"{path}: expected a JSON object with a 'kind' (an export manifest)")
        version, files = data.get("format_version"), data.get("files")
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ConfigError(f"{path}: format_version={version!r}: this beit_ds reads 1 to {FORMAT_VERSION}"
                              " (an export of a newer beit_ds?)")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ConfigError(f"{path}: files={files!r}: expected a list of paths inside the folder")
        for name in files:
            parts = _inside(name)
            if not parts:
                raise ConfigError(f"{path}: lists {name!r}: expected paths inside the folder")
            if not self.path.joinpath(*parts).is_file():
                raise ConfigError(f"{path}: lists {name}, which is missing (an incomplete copy of the export?)")
        source = data.get("source")
        return Manifest(data["kind"], tuple(files), version, source if isinstance(source, str) else None)

    def read_recipe(self) -> dict[str, Any]:
        """The recipe the export was made with (``recipe.json``)."""
        path = self.path / RECIPE_JSON
        try:
            recipe = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: no {RECIPE_JSON} (not an export folder of beit_ds)") from None
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: unreadable recipe ({type(err).__name__})") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"{path}: expected a JSON object (the recipe of the exported run)")
        return recipe

    def read_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of the safetensors file ``name`` of the export."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path / name
        if not path.is_file():
            raise ConfigError(f"{self.path}: no {name} in this export")
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"{path}: not a readable safetensors file ({err})") from None


def _inside(name: str) -> tuple[str, ...]:
    """The parts of the relative, ``/``-separated ``name``; ``()`` when it would leave its folder."""
    path = PurePosixPath(name)
    return () if path.is_absolute() or ".." in path.parts else path.parts


def save_tensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """``sd`` as a safetensors file at ``path`` (tensors made contiguous), written beside it and
    renamed into place: a link at ``path`` is replaced, never written through."""
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, tmp, metadata=metadata)
    return path


def save_weights(sd: dict[str, torch.Tensor], path: Path, **metadata: str) -> Path:
    """``sd`` as a safetensors file at ``path`` (``save_tensors``), tagged ``format=beit_ds``."""
    return save_tensors(sd, path, {"format": "beit_ds", **metadata})
