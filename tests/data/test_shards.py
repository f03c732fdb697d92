"""Tar shards: writing (library and launch/make_shards.py), the index, reading, rank × worker split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beit_ds.config import DataConfig
from beit_ds.data import DataError, LoaderPlace, build_finetune_loader, build_records
from beit_ds.data.records import ByteReader
from beit_ds.data.shards import INDEX_NAME, scan_shards, shard_records, write_shards
from beit_ds.data.sources import tree_or_list_records

ROOT = Path(__file__).resolve().parents[2]


def test_shards_round_trip_with_size_bound_and_index(image_tree, tmp_path):
    source = tree_or_list_records(image_tree)
    sizes = [(image_tree / source.keys[i]).stat().st_size for i in range(len(source))]
    bound = 2 * max(sizes) + 3000  # at most two images per shard
    report = write_shards(source, tmp_path / "shards", max_bytes=bound, max_count=100)
    assert report.loaded == 6 and report.skipped == 0
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert len(shards) >= 3 and all(p.stat().st_size <= bound + 10240 for p in shards)
    records = shard_records(tmp_path / "shards")  # from index.npz
    assert records.classes == ("a", "b", "c") and records.labels.tolist() == source.labels.tolist()
    read, original = ByteReader(records), ByteReader(source)
    assert all(read(i) == original(i) for i in range(6))
    scanned = scan_shards(tmp_path / "shards")  # without the index: same images, numeric class names
    assert scanned.labels.tolist() == records.labels.tolist() and scanned.classes == ("0", "1", "2")
    assert np.array_equal(scanned.offsets, records.offsets)
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(source, tmp_path / "shards", bound, 100)


def test_make_shards_script_and_loader(image_tree, tmp_path, tiny_data):
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch" / "make_shards.py"),
            str(image_tree),
            str(out),
            "--max-shard-samples",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "loaded 6, skipped 0, 3 classes" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == [INDEX_NAME, "shard-000000.tar", "shard-000001.tar"]
    loader = build_finetune_loader(
        tiny_data(source="shards", path=str(out)), "eval", LoaderPlace(batch_size=4)
    )
    labels = np.concatenate([b.labels.numpy() for b in loader])
    assert labels.tolist() == [0, 0, 0, 1, 1, 2] and loader.classes == ("a", "b", "c")
    bad = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "make_shards.py"), str(tmp_path / "nope"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "neither a folder nor a file list" in bad.stderr


def test_unreadable_shards_are_named(image_tree, tmp_path):
    write_shards(tree_or_list_records(image_tree), tmp_path / "s", max_bytes=10_000, max_count=2)
    (tmp_path / "s" / "shard-000001.tar").unlink()
    with pytest.raises(
        DataError, match=r"index.npz: 1 shards missing or unreadable, e.g. .*shard-000001.tar"
    ):
        build_records(DataConfig(source="shards", path=str(tmp_path / "s")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.tar").write_bytes(b"\x1f\x8b not really a tar")
    with pytest.raises(DataError, match=r"a.tar: not an uncompressed tar file"):
        build_records(DataConfig(source="shards", path=str(tmp_path / "junk")))


def test_ranks_and_workers_split_shards_without_overlap(image_tree, tmp_path, tiny_data):
    """3 shards of uneven size, 2 ranks × 2 worker processes: every image once per epoch."""
    source = tree_or_list_records(image_tree)
    write_shards(source, tmp_path / "s", max_bytes=10**9, max_count=4)  # shards of 4 and 2 images
    cfg = tiny_data(source="shards", path=str(tmp_path / "s"), repeats=4, num_workers=2)  # 24 samples
    seen = []
    for rank in range(2):
        loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=3, rank=rank, world_size=2))
        assert len(loader) == 4
        seen += [i for batch in loader for i in batch.indices.tolist()]
    assert sorted(seen) == list(range(24))
