"""Skip accounting counts distinct files, not reads (issue 12, item 13): a bad file read again in
a later epoch, a later repeat or as another sample's substitute is still one bad file."""

from __future__ import annotations

import pytest

from beit_ds.data import DataError, LoaderPlace, SkipReport, build_finetune_loader


@pytest.fixture
def ten_files(tmp_path, photos, jpeg_bytes):
    """``ten/<class>/<n>.jpg``, 10 files of which 3 are bad: one empty, one text, one cut short (corrupt)."""
    root = tmp_path / "ten"
    bad = {3: b"", 4: b"not an image at all", 7: jpeg_bytes(photos[1])[:300]}
    for n in range(10):
        folder = root / "ab"[n % 2]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.jpg").write_bytes(bad.get(n, jpeg_bytes(photos[n % len(photos)][n : n + 48, :64])))
    return root


@pytest.mark.timeout(120)
def test_three_bad_of_ten_files_over_four_epochs_is_a_fraction_of_0_3(ten_files, tiny_data):
    cfg = tiny_data(source="folder", path=str(ten_files), num_workers=2, max_skip_fraction=0.3, repeats=2)
    loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=5, seed=4))
    for epoch in range(4):
        assert sum(len(b) for b in loader.at(epoch)) == 20
    report = loader.report
    assert report.skipped == 3 and report.files == 10 and report.skip_fraction == pytest.approx(0.3)
    assert report.counts == {"corrupt": 1, "empty": 1, "not_an_image": 1}
    assert report.skipped_reads >= 3 * 2 * 4  # each bad file read at least once per repeat and epoch
    assert report.loaded == 80
    metrics = report.as_metrics()
    assert metrics["data_skipped"] == 3.0 and metrics["data_skip_fraction"] == pytest.approx(0.3)
    assert metrics["data_skipped_reads"] == report.skipped_reads
    assert report.summary().startswith(
        f"loaded 80, skipped 3 distinct files in {report.skipped_reads} reads: "
    )


@pytest.mark.timeout(120)
def test_more_bad_files_than_allowed_names_the_key_and_distinct_files(ten_files, tiny_data):
    cfg = tiny_data(source="folder", path=str(ten_files), max_skip_fraction=0.25, repeats=3)
    loader = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=5, seed=4))
    with pytest.raises(DataError) as err:
        list(loader)
    text = str(err.value)
    assert text.startswith(
        "data.max_skip_fraction=0.25: 3 of 10 distinct files read were bad (30.0%); loaded "
    )
    assert "\n" not in text


def test_a_substitute_and_a_file_loaded_before_are_not_counted_twice():
    report = SkipReport()
    report.mark_loaded([0, 1, 1, 2])
    assert report.files == 3 and report.loaded == 4
    report.add("corrupt", "x.jpg", 5)
    report.add("corrupt", "x.jpg", 5)  # read again, e.g. as a substitute
    report.add("unreadable", "y.jpg", 1)  # a file that loaded before, now failing (a flaky mount)
    report.add("ignored", "notes.txt")
    assert report.counts == {"corrupt": 1, "unreadable": 1, "ignored": 1}
    assert report.reads == {"corrupt": 2, "unreadable": 1, "ignored": 1}
    assert report.skipped == 2 and report.skipped_reads == 3 and report.files == 4
    report.mark_loaded([5, 7])  # 5 counted already (bad), 7 new
    assert report.files == 5 and report.skip_fraction == pytest.approx(2 / 5)
