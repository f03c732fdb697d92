"""Sources → records: folder trees, file lists, archives, the demo photographs, the shared datasets."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from beit_ds.config import DataConfig
from beit_ds.data import DataError, build_records
from beit_ds.data.archive import extracted_folder
from beit_ds.data.demo import DEMO_PHOTOS
from beit_ds.data.records import ByteReader


def test_demo_photographs_are_bundled_and_labelled():
    records = build_records(DataConfig(source="demo"))
    assert len(records) == len(DEMO_PHOTOS) == 14  # all present in the scikit-image wheel
    assert records.classes[:3] == ("astronaut", "coffee", "chelsea")
    assert records.class_counts() == [1] * 14
    assert ByteReader(records)(0)[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_folder_labels_classes_and_counts(image_tree):
    records = build_records(DataConfig(source="folder", path=str(image_tree)))
    assert records.classes == ("a", "b", "c") and records.class_counts() == [3, 2, 1]
    assert [records.keys[i] for i in range(len(records))][:2] == ["a/0.jpg", "a/1.jpg"]
    flat = build_records(DataConfig(source="folder", path=str(image_tree), subdir="b"))
    assert len(flat) == 2 and not flat.labelled
    with pytest.raises(DataError, match="has no labels but fine-tuning needs them"):
        flat.require_labels("fine-tuning")


def test_eval_split_maps_onto_training_classes(image_tree, tmp_path):
    val = tmp_path / "val"
    (val / "c").mkdir(parents=True)
    os.link(image_tree / "c" / "0.jpg", val / "c" / "x.jpg")
    cfg = DataConfig(source="folder", path=str(image_tree), eval_path=str(val))
    records = build_records(cfg, "eval", classes=("a", "b", "c"))
    assert records.labels.tolist() == [2] and records.classes == ("a", "b", "c")
    with pytest.raises(DataError, match=r"class folders \['c'\] are not among the 2 training classes"):
        build_records(cfg, "eval", classes=("a", "b"))


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.path='.*nowhere'.*folder not found"):
        build_records(DataConfig(source="folder", path=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files under"):
        build_records(DataConfig(source="folder", path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="archive not found"):
        build_records(DataConfig(source="archive", path=str(tmp_path / "x.tar.gz")))


def test_file_list_with_labels_comments_and_relative_paths(image_tree):
    listing = image_tree / "train.txt"
    listing.write_text("# path,label\na/0.jpg,dog\nb/1.jpg,cat\n\nc/0.jpg,dog\n")
    records = build_records(DataConfig(source="filelist", path=str(listing)))
    assert records.classes == ("cat", "dog") and records.labels.tolist() == [1, 0, 1]
    assert records.root == str(image_tree.resolve())
    listing.write_text("a/0.jpg,3\nb/0.jpg,0\n")
    assert build_records(DataConfig(source="filelist", path=str(listing))).classes == ("0", "1", "2", "3")
    listing.write_text("a/0.jpg\nb/0.jpg\n")
    assert not build_records(DataConfig(source="filelist", path=str(listing))).labelled


def test_file_list_errors_name_the_file_and_entries(image_tree):
    listing = image_tree / "list.txt"
    listing.write_text("a/0.jpg,1\n# comment\nb/0.jpg\n")
    with pytest.raises(DataError, match=r"list.txt:3: no label, but other lines have one"):
        build_records(DataConfig(source="filelist", path=str(listing)))
    listing.write_text("a/0.jpg\na/gone.jpg\nb/gone.jpg\n")
    with pytest.raises(DataError, match=r"2 of 3 checked entries do not exist, e.g. a/gone.jpg, b/gone.jpg"):
        build_records(DataConfig(source="filelist", path=str(listing)))
    records = build_records(DataConfig(source="filelist", path=str(listing), check_files=0))
    assert len(records) == 3  # not checked up front: reported as "missing" while loading


def _tar(folder, target, mode: str) -> None:
    with tarfile.open(target, mode) as tar:
        tar.add(folder, arcname="set")


def test_plain_tar_is_read_in_place_and_compressed_tar_extracted_once(image_tree, tmp_path):
    _tar(image_tree, tmp_path / "set.tar", "w")
    records = build_records(DataConfig(source="archive", path=str(tmp_path / "set.tar"), subdir="set"))
    assert records.classes == ("a", "b", "c") and records.class_counts() == [3, 2, 1]
    assert ByteReader(records)(0) == (image_tree / "a" / "0.jpg").read_bytes()
    _tar(image_tree, tmp_path / "set.tar.gz", "w:gz")
    cfg = DataConfig(
        source="archive", path=str(tmp_path / "set.tar.gz"), subdir="set", cache_dir=str(tmp_path / "c")
    )
    records = build_records(cfg)
    assert records.class_counts() == [3, 2, 1]
    folder = extracted_folder(tmp_path / "set.tar.gz", tmp_path / "c")
    stamp = os.stat(folder).st_mtime_ns
    assert build_records(cfg).root == str(folder / "set")
    assert os.stat(folder).st_mtime_ns == stamp  # reused, not extracted again
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [folder.name, folder.name + ".lock"]


def test_shared_imagenet_sample_tar_in_place(datasets_dir):
    tar = datasets_dir / "imagenet-sample-1k" / "imagenet_sample_1k_160.tar"
    cfg = DataConfig(source="archive", path=str(tar), subdir="imagenet-sample-1k/images")
    records = build_records(cfg)
    assert len(records) == 1000 and not records.labelled
    assert records.ignored == ()  # labels.tsv sits outside images/
    first = ByteReader(records)(0)
    assert first[:2] == b"\xff\xd8" and len(first) == records.sizes[0]
    full = build_records(DataConfig(source="archive", path=str(tar)))
    assert len(full) == 1000 and full.ignored == ("imagenet-sample-1k/labels.tsv",)


@pytest.mark.slow
def test_shared_cifar10_archive_is_a_labelled_set(datasets_dir, tmp_path):
    cfg = DataConfig(
        source="archive",
        path=str(datasets_dir / "cifar10" / "cifar10_jpeg.tar.gz"),
        subdir="train",
        eval_subdir="test",
        cache_dir=str(tmp_path),
    )
    train = build_records(cfg)
    assert len(train) == 50_000 and len(train.classes) == 10 and train.class_counts() == [5000] * 10
    test = build_records(cfg, "eval", classes=train.classes)
    assert np.bincount(test.labels).tolist() == [1000] * 10
