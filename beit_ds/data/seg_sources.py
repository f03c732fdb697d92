"""``data.source`` → ``SegPairs``: which (image, label map) pairs a segmentation recipe names.

| source     | a split is                                   | pairs                                      |
|------------|----------------------------------------------|--------------------------------------------|
| ``ade20k`` | ``images/{training,validation}`` and ``annotations/{…}`` below ``data.path`` | same path below both, ``.jpg`` ↔ ``.png`` |
| ``pairs``  | a folder holding ``data.image_dir`` and ``data.label_dir`` | same path below both, ``img_suffix`` ↔ ``label_suffix`` |
| ``filelist`` | a text file of ``image,label`` lines       | each line, relative to the list's folder   |

The training split reads ``data.path``; the evaluation split ``data.eval_path`` (ADE20K: the
``validation`` folders of ``eval_path``, or of ``path`` when unset). An image of a folder layout
without its label file is skipped and reported (``no_label``); files below the image folder without
``img_suffix`` are ``ignored``. A file list entry that does not exist, or a split with no pairs at
all, is a one-line ``DataError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beit_ds.config import SegDataConfig
from beit_ds.data.records import Records, StringTable, walk_tree
from beit_ds.data.skips import DataError
from beit_ds.data.sources import SPLITS

ADE20K_SPLITS = {"train": "training", "eval": "validation"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegPairs:
    """N pairs: ``images`` and ``labels`` tables with the same ``root``, row ``i`` ↔ row ``i``.

    ``images.ignored``: files below the image folder that are not images of the split (relative
    to ``root``); ``unlabelled``: images whose label file was not found (their paths).
    """

    images: Records
    labels: Records
    unlabelled: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)


def _pairs(name: str, root: Path, images: list[str], labels: list[str], **extra: tuple[str, ...]) -> SegPairs:
    ignored = extra.get("ignored", ())
    table = Records(name, str(root), StringTable.from_strings(images), ignored=ignored)
    label_table = Records(f"{name} (labels)", str(root), StringTable.from_strings(labels))
    return SegPairs(table, label_table, extra.get("unlabelled", ()))


def folder_pairs(
    name: str, root: Path, image_dir: str, label_dir: str, suffixes: tuple[str, str]
) -> SegPairs:
    """Every ``image_dir/<p><img_suffix>`` below ``root`` with its ``label_dir/<p><label_suffix>``."""
    img_suffix, label_suffix = suffixes
    layout = f"expected {image_dir}/**/*{img_suffix} with {label_dir}/**/*{label_suffix} of the same names"
    image_root, label_root = root / image_dir, root / label_dir
    if not image_root.is_dir():
        raise DataError(f"{name}: folder {image_root} not found ({layout})")
    names, others, _ = walk_tree(image_root)
    found = set(walk_tree(label_root)[0]) if label_root.is_dir() else set()
    images, labels, unlabelled = [], [], []
    ignored = [f"{image_dir}/{other}" for other in others]
    for rel in names:
        hidden = any(part.startswith(".") for part in Path(rel).parts)
        if hidden or not rel.endswith(img_suffix):
            ignored.append(f"{image_dir}/{rel}")
            continue
        label = rel[: -len(img_suffix)] + label_suffix
        if label in found:
            images.append(f"{image_dir}/{rel}")
            labels.append(f"{label_dir}/{label}")
        else:
            unlabelled.append(str(image_root / rel))
    if not images:
        raise DataError(
            f"{name}: no image/label pairs in {root} ({len(names)} files below {image_dir}, {len(found)}"
            f" below {label_dir}; {layout})"
        )
    return _pairs(name, root, images, labels, ignored=tuple(ignored), unlabelled=tuple(unlabelled))


def filelist_pairs(name: str, list_file: Path, check_files: int) -> SegPairs:
    """The pairs of ``list_file``: ``image,label`` per line (``#`` comments, paths relative to the
    list's folder); ``check_files`` entries spread over the list must exist, both files."""
    if not list_file.is_file():
        raise DataError(f"{name}: file list not found")
    images: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{list_file}:{n}: expected 'image,label', got {line!r}")
        images.append(parts[0])
        labels.append(parts[1])
        lines.append(n)
    if not images:
        raise DataError(f"{name}: the file list names no image,label pairs")
    root = list_file.resolve().parent
    if check_files:
        picks = np.unique(np.linspace(0, len(images) - 1, num=min(check_files, len(images))).astype(np.int64))
        for i in picks:
            for path in (images[i], labels[i]):
                if not (root / path).exists():
                    raise DataError(
                        f"{list_file}:{lines[i]}: {path} does not exist (relative paths are resolved against {root})"
                    )
    return _pairs(str(list_file), root, images, labels)


def _split_path(data: SegDataConfig, split: str) -> tuple[str, str]:
    """(``data.<key>=<value>`` for messages, the path) of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if split == "train":
        return f"data.path={data.path!r}", data.path
    if data.eval_path:
        return f"data.eval_path={data.eval_path!r}", data.eval_path
    if data.source == "ade20k":
        return f"data.path={data.path!r}", data.path
    raise DataError(
        f"data.eval_path='': the eval split of data.source={data.source!r} needs its own"
        f" {'split folder' if data.source == 'pairs' else 'file list'} (the training set is never used silently)"
    )


def build_seg_pairs(data: SegDataConfig, split: str = "train") -> SegPairs:
    """The (image, label map) pairs of ``split`` as ``data.source`` describes them (module table)."""
    name, path_text = _split_path(data, split)
    path = Path(path_text).expanduser()
    suffixes = (data.img_suffix, data.label_suffix)
    if data.source == "ade20k":
        sub = ADE20K_SPLITS[split]
        pairs = folder_pairs(name, path, f"images/{sub}", f"annotations/{sub}", suffixes)
    elif data.source == "pairs":
        pairs = folder_pairs(name, path, data.image_dir, data.label_dir, suffixes)
    else:
        pairs = filelist_pairs(name, path, data.check_files)
    log.info("segmentation data %s: %s, %d image/label pairs", split, name, len(pairs))
    if pairs.unlabelled:
        log.warning(
            "segmentation data %s: %d images without a label file skipped, e.g. %s",
            split,
            len(pairs.unlabelled),
            pairs.unlabelled[0],
        )
    return pairs
