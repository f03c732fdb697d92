"""The segmentation loader: batches, resume, rank splits, skipped label files, label errors, CamVid."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from beit_ds.config import SegDataConfig, SegTransformConfig
from beit_ds.data import DataError, LoaderPlace, SegBatch, build_segmentation_loader

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]]
)
TINY = SegTransformConfig(crop_size=16, scale=(48, 24), eval_scale=(40, 20))


def _write_split(folder: Path, count: int, size: tuple[int, int] = (48, 36)) -> list[np.ndarray]:
    """``folder/images/<n>.jpg`` + ``folder/labels/<n>.png`` (classes 0..5 in 6 px blocks; label
    ``n`` = 3 is a palette PNG); returns the label arrays."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    w, h = size
    labels = []
    for n in range(count):
        grid = np.random.default_rng(n).integers(0, 6, size=(h // 6 + 1, w // 6 + 1))
        label = np.kron(grid, np.ones((6, 6), dtype=np.int64))[:h, :w].astype(np.uint8)
        Image.fromarray(PALETTE[label].astype(np.uint8)).save(folder / "images" / f"{n:02d}.jpg", quality=90)
        png = Image.fromarray(label)
        if n == 3:
            png = png.convert("P")  # "P" of an "L" image: palette index = grey value
        png.save(folder / "labels" / f"{n:02d}.png")
        labels.append(label)
    return labels


def _cfg(path: Path, **overrides) -> SegDataConfig:
    return SegDataConfig(
        **{"source": "pairs", "path": str(path), "num_workers": 0, "transform": TINY, **overrides}
    )


def test_train_batches_and_exact_resume(tmp_path: Path):
    _write_split(tmp_path / "train", 10)
    loader = build_segmentation_loader(
        _cfg(tmp_path / "train", repeats=2), "train", LoaderPlace(batch_size=4, seed=5), 6
    )
    assert loader.num_samples == 20 and len(loader) == 5
    batches = list(loader)
    b = batches[0]
    assert isinstance(b, SegBatch) and len(b) == 4
    assert b.images.shape == (4, 3, 16, 16) and b.images.dtype == torch.float32
    assert b.labels.shape == (4, 16, 16) and b.labels.dtype == torch.int64
    values = set(torch.cat([x.labels.flatten() for x in batches]).tolist())
    assert values <= set(range(6)) | {255} and len(values - {255}) == 6
    assert sorted(torch.cat([x.indices for x in batches]).tolist()) == list(range(20))
    assert loader.state_dict() == {"epoch": 0, "position": 20} and loader.report.loaded == 20
    resumed = list(loader.at(0, 8))
    assert len(resumed) == 3
    for x, y in zip(resumed, batches[2:]):
        assert (
            torch.equal(x.images, y.images)
            and torch.equal(x.labels, y.labels)
            and torch.equal(x.indices, y.indices)
        )
    later = next(iter(loader.at(1)))
    assert not torch.equal(later.indices, b.indices)
    half = b.to("cpu", torch.bfloat16)
    assert (
        half.images.dtype == torch.bfloat16
        and half.labels.dtype == torch.int64
        and half.indices.dtype == torch.int64
    )


def test_same_key_same_sample_bitwise(tmp_path: Path):
    _write_split(tmp_path / "train", 4)
    dataset = build_segmentation_loader(
        _cfg(tmp_path / "train"), "train", LoaderPlace(batch_size=2, seed=1), 6
    ).dataset
    a, b, c = dataset[(2, 3)], dataset[(2, 3)], dataset[(2, 1)]
    assert torch.equal(a.views[0], b.views[0]) and torch.equal(a.views[1], b.views[1])
    assert not torch.equal(a.views[0], c.views[0])
    other_seed = build_segmentation_loader(
        _cfg(tmp_path / "train"), "train", LoaderPlace(batch_size=2, seed=2), 6
    )
    assert not torch.equal(other_seed.dataset[(2, 3)].views[0], a.views[0])


def test_eval_two_ranks_cover_each_image_once_at_original_size(tmp_path: Path):
    labels = _write_split(tmp_path / "val", 5)
    cfg = _cfg(tmp_path / "train", eval_path=str(tmp_path / "val"))
    seen = []
    for rank in range(2):
        loader = build_segmentation_loader(cfg, "eval", LoaderPlace(batch_size=4, rank=rank, world_size=2), 6)
        assert len(loader) == (3 if rank == 0 else 2)
        for batch in loader:
            assert batch.images.shape == (1, 3, 20, 27) and batch.labels.shape == (
                1,
                36,
                48,
            )  # keep-ratio (40, 20)
            i = int(batch.indices[0])
            assert torch.equal(batch.labels[0], torch.from_numpy(labels[i]).long())  # P-mode label 3 included
            seen.append(i)
    assert sorted(seen) == list(range(5))


def test_bad_label_files_are_skipped_counted_and_reported(tmp_path: Path):
    split = tmp_path / "train"
    _write_split(split, 8)
    (split / "labels" / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(split / "labels" / "02.png")  # 10x10 for 48x36
    (split / "labels" / "03.png").unlink()
    cfg = _cfg(split, num_workers=2, max_skip_fraction=1.0)
    loader = build_segmentation_loader(cfg, "train", LoaderPlace(batch_size=7, seed=0), 6)
    assert len(loader.dataset) == 7  # 03 has no label: not a pair
    assert sum(len(b) for b in loader) == 7  # each bad pair replaced by the next good one
    report = loader.report
    assert report.counts == {"not_an_image": 1, "label_size": 1, "no_label": 1}
    assert report.examples["not_an_image"] == [str(split / "labels" / "01.png")]
    assert report.examples["label_size"] == [str(split / "labels" / "02.png")]
    assert report.examples["no_label"] == [str(split / "images" / "03.jpg")]
    assert report.skipped == 3 and report.files == 8


def test_a_label_outside_the_classes_is_a_one_line_error(tmp_path: Path):
    split = tmp_path / "train"
    _write_split(split, 3)
    label = np.zeros((36, 48), dtype=np.uint8)
    label[5, 5] = 9
    Image.fromarray(label).save(split / "labels" / "01.png")
    for workers in (0, 1):
        loader = build_segmentation_loader(
            _cfg(split, num_workers=workers), "train", LoaderPlace(batch_size=3), 6
        )
        with pytest.raises(DataError) as err:
            list(loader)
        assert str(err.value) == (
            f"{split / 'labels' / '01.png'}: label value 9 outside classes 0..5, void 255"
            " (num_classes=6, reduce_zero_label=False)"
        )


def test_a_negative_label_in_a_32_bit_map_is_a_one_line_error(tmp_path: Path):
    split = tmp_path / "train"
    labels = _write_split(split, 3)
    for n, label in enumerate(labels):  # 32-bit signed label maps (TIFF mode "I"), -1 on half the second
        wide = label.astype(np.int32)
        if n == 1:
            wide[:18] = -1  # unchecked, np.bincount of a training crop failed on them in a worker
        Image.fromarray(wide).save(split / "labels" / f"{n:02d}.tif")
    for split_name, workers in (("train", 0), ("train", 1), ("eval", 1)):
        cfg = _cfg(split, num_workers=workers, label_suffix=".tif", eval_path=str(split))
        loader = build_segmentation_loader(cfg, split_name, LoaderPlace(batch_size=3), 6)
        with pytest.raises(DataError) as err:
            list(loader)
        assert str(err.value) == (
            f"{split / 'labels' / '01.tif'}: label value -1 outside classes 0..5, void 255"
            " (num_classes=6, reduce_zero_label=False)"
        )


def test_camvid_archive_pairs(datasets_dir: Path, tmp_path: Path):
    archive = datasets_dir / "camvid" / "camvid_segnet_480x360.tar.gz"
    with tarfile.open(archive) as tar:
        members = [
            m for m in tar.getmembers() if m.isfile()
        ]  # in archive order: one pass over the gzip stream
        stems = sorted(Path(m.name).stem for m in members if m.name.startswith("camvid/val/images/"))[:4]
        wanted = {
            f"camvid/val/{kind}/{stem}.{ext}"
            for stem in stems
            for kind, ext in (("images", "jpg"), ("labels", "png"))
        }
        tar.extractall(tmp_path, members=[m for m in members if m.name in wanted], filter="data")
    cfg = SegDataConfig(
        source="pairs",
        path=str(tmp_path / "camvid" / "val"),
        ignore_index=11,
        num_workers=0,
        transform=SegTransformConfig(crop_size=128, scale=(240, 180)),
    )
    train = build_segmentation_loader(cfg, "train", LoaderPlace(batch_size=4, seed=0), num_classes=11)
    (batch,) = list(train)
    assert batch.images.shape == (4, 3, 128, 128) and batch.labels.shape == (4, 128, 128)
    assert set(batch.labels.unique().tolist()) <= set(range(11)) | {255}
    evals = build_segmentation_loader(
        SegDataConfig(**{**cfg.__dict__, "eval_path": cfg.path}),
        "eval",
        LoaderPlace(batch_size=1),
        num_classes=11,
    )
    counts = torch.zeros(256, dtype=torch.int64)
    for b in evals:
        assert b.images.shape == (1, 3, 512, 683) and b.labels.shape == (1, 360, 480)  # CamVid at (2048, 512)
        counts += torch.bincount(b.labels.flatten(), minlength=256)
    classes = counts[:11]
    assert int((classes > 0).sum()) >= 8  # street scenes: sky, building, road, car, ... in four frames
    assert counts[255] < 0.1 * counts.sum() and classes.max() < 0.5 * counts.sum()
    assert evals.report.skipped == 0 and evals.report.loaded == 4
