"""Segmentation sources: ADE20K / pairs / file-list layouts, unlabelled images, one-line errors, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from beit_ds.config import ConfigError, SegDataConfig, SegTransformConfig, reduces_zero_label
from beit_ds.data.seg_sources import build_seg_pairs
from beit_ds.data.skips import DataError


def _touch(root: Path, *names: str) -> None:
    """Empty files: listing never decodes, so their content does not matter here."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def _keys(table) -> list[str]:
    return [table.keys[i] for i in range(len(table))]


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    _touch(root, "images/training/ADE_train_1.jpg", "images/training/ADE_train_2.jpg")
    _touch(
        root, "images/training/ADE_train_3.jpg", "images/training/notes.txt", "images/training/.hidden.jpg"
    )
    _touch(root, "annotations/training/ADE_train_1.png", "annotations/training/ADE_train_2.png")
    _touch(root, "annotations/training/ADE_train_9.png")  # a label without an image: not a pair
    _touch(root, "images/validation/ADE_val_1.jpg", "annotations/validation/ADE_val_1.png")
    return root


def test_ade20k_layout_pairs_by_stem_and_reports_unlabelled_images(ade_root: Path):
    pairs = build_seg_pairs(SegDataConfig(source="ade20k", path=str(ade_root)), "train")
    assert len(pairs) == 2 and pairs.images.root == str(ade_root)
    assert _keys(pairs.images) == ["images/training/ADE_train_1.jpg", "images/training/ADE_train_2.jpg"]
    assert _keys(pairs.labels) == [
        "annotations/training/ADE_train_1.png",
        "annotations/training/ADE_train_2.png",
    ]
    assert pairs.labels.location(1) == str(ade_root / "annotations/training/ADE_train_2.png")
    assert pairs.unlabelled == (str(ade_root / "images/training/ADE_train_3.jpg"),)
    assert sorted(pairs.images.ignored) == ["images/training/.hidden.jpg", "images/training/notes.txt"]
    evals = build_seg_pairs(SegDataConfig(source="ade20k", path=str(ade_root)), "eval")
    assert _keys(evals.images) == ["images/validation/ADE_val_1.jpg"] and evals.unlabelled == ()


def test_ade20k_eval_path_is_another_root(ade_root: Path, tmp_path: Path):
    other = tmp_path / "other"
    _touch(other, "images/validation/a.jpg", "images/validation/b.jpg")
    _touch(other, "annotations/validation/a.png", "annotations/validation/b.png")
    cfg = SegDataConfig(source="ade20k", path=str(ade_root), eval_path=str(other))
    assert _keys(build_seg_pairs(cfg, "eval").labels) == [
        "annotations/validation/a.png",
        "annotations/validation/b.png",
    ]


def test_pairs_layout_with_sub_folders_and_suffixes(tmp_path: Path):
    split = tmp_path / "city" / "train"
    _touch(split, "img/aachen/x_leftImg8bit.png", "img/bonn/y_leftImg8bit.png", "img/bonn/z_leftImg8bit.png")
    _touch(split, "gt/aachen/x_gtFine.png", "gt/bonn/y_gtFine.png")
    cfg = SegDataConfig(
        source="pairs",
        path=str(split),
        image_dir="img",
        label_dir="gt",
        img_suffix="_leftImg8bit.png",
        label_suffix="_gtFine.png",
    )
    pairs = build_seg_pairs(cfg, "train")
    assert _keys(pairs.images) == ["img/aachen/x_leftImg8bit.png", "img/bonn/y_leftImg8bit.png"]
    assert _keys(pairs.labels) == ["gt/aachen/x_gtFine.png", "gt/bonn/y_gtFine.png"]
    assert pairs.unlabelled == (str(split / "img/bonn/z_leftImg8bit.png"),)


def test_pairs_eval_split_needs_its_own_folder(tmp_path: Path):
    _touch(tmp_path, "images/a.jpg", "labels/a.png")
    with pytest.raises(DataError, match=r"^data.eval_path='': the eval split of data.source='pairs'"):
        build_seg_pairs(SegDataConfig(source="pairs", path=str(tmp_path)), "eval")


def test_no_pairs_names_the_folder_and_the_layout(tmp_path: Path):
    _touch(tmp_path, "images/a.jpg", "labels/b.png")
    cfg = SegDataConfig(source="pairs", path=str(tmp_path))
    with pytest.raises(DataError) as err:
        build_seg_pairs(cfg, "train")
    text = str(err.value)
    assert "\n" not in text and f"no image/label pairs in {tmp_path}" in text
    assert "1 files below images, 1 below labels" in text and "images/**/*.jpg with labels/**/*.png" in text
    with pytest.raises(
        DataError, match=r"ADE.*images/training not found \(expected images/training/\*\*/\*.jpg"
    ):
        build_seg_pairs(SegDataConfig(source="ade20k", path=str(tmp_path / "ADE")), "train")


def test_filelist_pairs_and_their_errors(tmp_path: Path):
    _touch(tmp_path, "im/a.jpg", "im/b.jpg", "lab/a.png", "lab/b.png")
    listing = tmp_path / "train.txt"
    listing.write_text("# image,label\nim/a.jpg, lab/a.png\n\nim/b.jpg,lab/b.png\n")
    pairs = build_seg_pairs(SegDataConfig(source="filelist", path=str(listing)), "train")
    assert _keys(pairs.images) == ["im/a.jpg", "im/b.jpg"] and _keys(pairs.labels) == [
        "lab/a.png",
        "lab/b.png",
    ]
    assert pairs.images.root == str(tmp_path)
    listing.write_text("im/a.jpg,lab/a.png\nim/b.jpg,lab/missing.png\n")
    with pytest.raises(DataError, match=rf"^{listing}:2: lab/missing.png does not exist \(relative paths"):
        build_seg_pairs(SegDataConfig(source="filelist", path=str(listing)), "train")
    listing.write_text("im/a.jpg,lab/a.png\nim/b.jpg\n")
    with pytest.raises(DataError, match=rf"^{listing}:2: expected 'image,label', got 'im/b.jpg'$"):
        build_seg_pairs(SegDataConfig(source="filelist", path=str(listing)), "train")
    listing.write_text("# nothing\n")
    with pytest.raises(DataError, match="names no image,label pairs"):
        build_seg_pairs(SegDataConfig(source="filelist", path=str(listing)), "train")
    with pytest.raises(DataError, match=r"^data.eval_path='.*nope.txt': file list not found$"):
        build_seg_pairs(
            SegDataConfig(source="filelist", path=str(listing), eval_path=str(tmp_path / "nope.txt")), "eval"
        )


def test_config_defaults_and_one_line_errors():
    assert reduces_zero_label(SegDataConfig(source="ade20k", path="x")) is True
    assert reduces_zero_label(SegDataConfig(source="pairs", path="x")) is False
    assert reduces_zero_label(SegDataConfig(source="ade20k", path="x", reduce_zero_label=False)) is False
    t = SegTransformConfig()
    assert (t.crop_size, t.scale, t.ratio_range, t.cat_max_ratio, t.eval_scale) == (
        512,
        (2048, 512),
        (0.5, 2.0),
        0.75,
        (2048, 512),
    )
    assert t.mean == pytest.approx((123.675 / 255, 116.28 / 255, 103.53 / 255))
    assert t.std == pytest.approx((58.395 / 255, 57.12 / 255, 57.375 / 255))
    cases = [
        (dict(source="voc"), r"^data.source='voc': expected one of 'ade20k', 'pairs', 'filelist'$"),
        (dict(path=""), r"^data.path='': expected a path for data.source='ade20k'$"),
        (dict(ignore_index=-1), r"^data.ignore_index=-1: expected an integer in 0..65535$"),
        (dict(reduce_zero_label="yes"), r"^data.reduce_zero_label='yes': expected true, false or null"),
        (dict(num_workers=-1), r"^data.num_workers=-1: expected an integer >= 0$"),
        (dict(max_skip_fraction=2), r"^data.max_skip_fraction=2: expected a number in \[0, 1\]$"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            SegDataConfig(**{"path": "x", **overrides})
    with pytest.raises(
        ConfigError, match=r"^data.transform.scale=\(2048, 0\): expected two positive integers"
    ):
        SegTransformConfig(scale=(2048, 0))
    with pytest.raises(ConfigError, match=r"^data.transform.cat_max_ratio=0: expected a number in \(0, 1\]"):
        SegTransformConfig(cat_max_ratio=0)
