"""Listing and reading never hang: symlink loops end, FIFOs and other non-regular files are never
opened, and they are counted (issue 12, item 12)."""

from __future__ import annotations

import os

import pytest

from beit_ds.data import LoaderPlace, build_finetune_loader, build_records
from beit_ds.data.records import ByteReader, filelist_records, walk_tree
from beit_ds.data.skips import SkipSample

IMAGES = ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b/0.jpg", "b/1.jpg", "c/0.jpg"]  # the image_tree fixture


@pytest.mark.timeout(30)
def test_one_symlink_loop_lists_each_image_once(image_tree, tiny_data):
    os.symlink("..", image_tree / "a" / "loop")  # a/loop/a/loop/... : 41 copies with os.walk
    records = build_records(tiny_data(source="folder", path=str(image_tree)))
    assert [records.keys[i] for i in range(len(records))] == IMAGES
    assert records.classes == ("a", "b", "c") and records.class_counts() == [3, 2, 1]


@pytest.mark.timeout(30)
def test_two_symlink_loops_finish_and_keep_real_paths(image_tree, tiny_data):
    os.symlink("../b", image_tree / "a" / "to_b")  # a → b → a → ... : os.walk never finished
    os.symlink("../a", image_tree / "b" / "to_a")
    os.symlink(str(image_tree), image_tree / "c" / "root")  # absolute, to the top
    records = build_records(tiny_data(source="folder", path=str(image_tree)))
    assert [records.keys[i] for i in range(len(records))] == IMAGES  # b's images under b, not a/to_b
    assert records.class_counts() == [3, 2, 1]
    files, others, links_skipped = walk_tree(image_tree)
    assert files == IMAGES and others == [] and links_skipped == 3


@pytest.mark.timeout(30)
def test_links_out_of_the_tree_are_followed_once_even_in_a_loop(tmp_path, image_tree, tiny_data):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.jpg").write_bytes((image_tree / "a" / "0.jpg").read_bytes())
    os.symlink("..", outside / "deep" / "up")  # a loop outside the tree
    os.symlink(str(outside), image_tree / "c" / "ext")
    os.symlink(str(outside), image_tree / "c" / "ext_again")  # the same real folder: not listed twice
    files, _, links_skipped = walk_tree(image_tree)
    assert files == [*IMAGES, "c/ext/deep/x.jpg"] and links_skipped == 2


@pytest.mark.timeout(30)
def test_a_fifo_in_a_folder_is_ignored_and_counted_never_opened(image_tree, tiny_data):
    os.mkfifo(image_tree / "a" / "x.jpg")  # nobody ever writes to it: open() would block for good
    os.symlink("missing.jpg", image_tree / "b" / "dangling.jpg")
    cfg = tiny_data(source="folder", path=str(image_tree), num_workers=2)
    loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=2))
    assert len(loader.dataset.records) == 6
    assert sorted(loader.dataset.records.ignored) == ["a/x.jpg", "b/dangling.jpg"]
    assert sum(len(b) for b in loader) == 6
    assert loader.report.counts == {"ignored": 2} and loader.report.skipped == 0


@pytest.mark.timeout(60)
def test_a_fifo_in_a_file_list_is_skipped_as_unreadable_in_a_worker(image_tree, tiny_data):
    os.mkfifo(image_tree / "a" / "x.jpg")
    names = [*IMAGES[:3], "a/x.jpg", *IMAGES[3:]]
    (image_tree / "list.txt").write_text("".join(f"{n},{n[0]}\n" for n in names))
    cfg = tiny_data(
        source="filelist", path=str(image_tree / "list.txt"), num_workers=2, max_skip_fraction=1.0
    )
    loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=7))
    batches = list(loader)
    assert len(batches) == 1 and len(batches[0]) == 7  # the FIFO's slot filled by its substitute
    report = loader.report
    assert report.counts == {"unreadable": 1} and report.skipped == 1 and report.files == 7
    assert report.examples["unreadable"] == [str(image_tree / "a" / "x.jpg")]


def test_the_reader_refuses_non_regular_files_with_their_kind(image_tree):
    os.mkfifo(image_tree / "a" / "x.jpg")
    (image_tree / "list.txt").write_text("a/x.jpg\na/0.jpg\n")
    read = ByteReader(filelist_records(image_tree / "list.txt", check_files=2))
    with pytest.raises(SkipSample, match=r"x.jpg: not a regular file \(FIFO\)") as err:
        read(0)
    assert err.value.reason == "unreadable"
    assert read(1) == (image_tree / "a" / "0.jpg").read_bytes()
