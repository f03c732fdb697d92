"""``data.source`` → ``Records``: which images a recipe names, for training or evaluation.

| source     | ``data.path``                           | labels                                   |
|------------|-----------------------------------------|------------------------------------------|
| ``demo``   | unused: scikit-image's photographs      | the photograph (``demo.py``)             |
| ``folder`` | a folder tree (``subdir`` below it)     | first sub-folder, when every image has one |
| ``filelist`` | a text file of ``path[,label]`` lines | the label column, integers or class names |
| ``shards`` | a folder of WebDataset tar shards       | ``.cls`` members                         |
| ``archive``| ``.tar`` (read in place) or ``.tar.gz`` (extracted once to ``data.cache_dir``) | like a folder |

The evaluation split reads ``data.eval_path`` / ``data.eval_subdir``; with neither set it is the
training set itself (the demo's case). ``classes`` maps an evaluation set's class names onto the
training set's label numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from beit_ds.config import DataConfig
from beit_ds.data.archive import extracted_folder, is_compressed_archive
from beit_ds.data.demo import demo_records
from beit_ds.data.records import Records, filelist_records, folder_records
from beit_ds.data.shards import shard_records, tar_archive_records
from beit_ds.data.skips import DataError

SPLITS = ("train", "eval")

log = logging.getLogger(__name__)


def split_location(cfg: DataConfig, split: str) -> tuple[str, str]:
    """(path, subdir) of ``split``: evaluation falls back to the training location."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if split == "eval" and (cfg.eval_path or cfg.eval_subdir):
        return cfg.eval_path or cfg.path, cfg.eval_subdir
    return cfg.path, cfg.subdir


def _below(path: Path, subdir: str, key: str) -> Path:
    folder = path / subdir if subdir else path
    if not folder.is_dir():
        raise DataError(f"data.{key}={str(folder)!r}: folder not found")
    return folder


def build_records(cfg: DataConfig, split: str = "train", classes: Sequence[str] | None = None) -> Records:
    """The images of ``split`` as ``cfg.source`` describes them (see the module table)."""
    path_text, subdir = split_location(cfg, split)
    key = "eval_path" if split == "eval" and cfg.eval_path else "path"
    path = Path(path_text).expanduser()
    if cfg.source == "demo":
        records = demo_records()
    elif cfg.source == "folder":
        records = folder_records(f"data.{key}={path_text!r}", _below(path, subdir, key), classes)
    elif cfg.source == "filelist":
        records = filelist_records(path, cfg.check_files, classes)
    elif cfg.source == "shards":
        records = shard_records(_below(path, subdir, key))
    elif not path.is_file():
        raise DataError(f"data.{key}={path_text!r}: archive not found")
    elif is_compressed_archive(path):
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
        folder = extracted_folder(path, cache)
        records = folder_records(f"data.{key}={path_text!r}", _below(folder, subdir, "subdir"), classes)
    else:
        records = tar_archive_records(path, subdir, classes)
    classes_text = f", {len(records.classes)} classes" if records.classes else ", unlabelled"
    log.info("data %s: %s, %d images%s", split, records.name, len(records), classes_text)
    if records.ignored:
        log.warning(
            "data %s: ignored %d non-image files, e.g. %s", split, len(records.ignored), records.ignored[0]
        )
    return records


def tree_or_list_records(src: Path, check_files: int = 256) -> Records:
    """Records of ``src``: a folder tree (ImageFolder labels) or a ``path[,label]`` file list."""
    if src.is_dir():
        return folder_records(f"source {str(src)!r}", src)
    if src.is_file():
        return filelist_records(src, check_files)
    raise DataError(f"{src}: neither a folder nor a file list")
