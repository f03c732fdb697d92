"""The engine-facing loaders: typed batches, masks, labels, positions, worker skip reports, errors."""

from __future__ import annotations

import pytest
import torch

from beit_ds.config import MaskingConfig
from beit_ds.data import (
    ClassBatch,
    DataError,
    LoaderPlace,
    MIMBatch,
    build_finetune_loader,
    build_pretrain_loader,
)

GRID = (8, 8)


def test_pretrain_batches_on_the_demo_photographs(tiny_data, tiny_masking):
    loader = build_pretrain_loader(
        tiny_data(repeats=5), tiny_masking, GRID, LoaderPlace(batch_size=8, seed=3)
    )
    assert loader.num_samples == 70 and len(loader) == 8 and loader.classes[0] == "astronaut"
    batches = list(loader)
    assert len(batches) == 8 and all(isinstance(b, MIMBatch) for b in batches)
    b = batches[0]
    assert b.images.shape == (8, 3, 32, 32) and b.images.dtype == torch.float32
    assert b.tokenizer_images.shape == (8, 3, 16, 16)
    assert b.bool_masked_pos.shape == (8, 8, 8) and b.bool_masked_pos.dtype == torch.bool
    counts = torch.cat([x.bool_masked_pos.flatten(1).sum(1) for x in batches])
    assert counts.max() <= 26 and counts.float().mean() > 23  # Algorithm 1: at most, about, 26 masked
    assert torch.equal(b.labels, b.indices % 14)  # demo label = the photograph
    assert loader.state_dict() == {"epoch": 0, "position": 64}
    assert loader.report.loaded == 64 and loader.report.skipped == 0


def test_random_masking_and_batch_to_dtype(tiny_data):
    masking = MaskingConfig(strategy="random", num_masking_patches=20)
    batch = next(iter(build_pretrain_loader(tiny_data(), masking, GRID, LoaderPlace(batch_size=4))))
    assert batch.bool_masked_pos.flatten(1).sum(1).tolist() == [20] * 4
    half = batch.to("cpu", torch.bfloat16)
    assert half.images.dtype == half.tokenizer_images.dtype == torch.bfloat16
    assert half.bool_masked_pos.dtype == torch.bool and half.indices.dtype == torch.int64
    assert torch.allclose(half.images.float(), batch.images, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning memory needs CUDA")
def test_batches_pin_and_move_to_the_gpu(tiny_data, tiny_masking):
    loader = build_pretrain_loader(tiny_data(num_workers=1), tiny_masking, GRID, LoaderPlace(batch_size=4))
    batch = next(iter(loader))
    assert batch.images.is_pinned()
    assert batch.to("cuda", torch.float16).images.device.type == "cuda"


def test_worker_processes_report_their_skips(tmp_path, image_tree, tiny_data, tiny_masking):
    (image_tree / "a" / "broken.jpg").write_bytes(b"")
    cfg = tiny_data(source="folder", path=str(image_tree), num_workers=2, max_skip_fraction=1.0, repeats=2)
    loader = build_pretrain_loader(cfg, tiny_masking, GRID, LoaderPlace(batch_size=7))
    assert sum(len(b) for b in loader) == 14
    report = loader.report
    assert report.counts == {"empty": 1} and report.reads == {"empty": 2}  # one file, read per repeat
    assert report.examples["empty"] == [str(image_tree / "a" / "broken.jpg")]
    assert report.files == 7 and report.skipped == 1 and report.loaded == 14
    later = loader.at(epoch=1)
    list(later)
    assert later.report is report and report.counts == {"empty": 1} and report.reads == {"empty": 4}


def test_finetune_train_and_eval_loaders(image_tree, tiny_data):
    cfg = tiny_data(source="folder", path=str(image_tree), repeats=3)
    train = build_finetune_loader(cfg, "train", LoaderPlace(batch_size=4, seed=1))
    batch = next(iter(train))
    assert isinstance(batch, ClassBatch) and batch.images.shape == (4, 3, 32, 32)
    assert train.classes == ("a", "b", "c") and train.class_counts() == [3, 2, 1] and len(train) == 4
    evals = [
        build_finetune_loader(cfg, "eval", LoaderPlace(batch_size=4, rank=r, world_size=4)) for r in range(4)
    ]
    labels = sorted(label for e in evals for b in e for label in b.labels.tolist())
    assert labels == [0, 0, 0, 1, 1, 2]  # every image once, no repeats, nothing padded


def test_unlabelled_source_for_finetuning_is_a_clear_error(image_tree, tiny_data):
    cfg = tiny_data(source="folder", path=str(image_tree), subdir="a")
    with pytest.raises(DataError, match="has no labels but fine-tuning \\(train split\\) needs them"):
        build_finetune_loader(cfg, "train", LoaderPlace(batch_size=2))


def test_grid_must_divide_the_input_size(tiny_data, tiny_masking):
    with pytest.raises(
        DataError, match=r"data.transform.input_size=32: not divisible by the patch grid \(7, 7\)"
    ):
        build_pretrain_loader(tiny_data(), tiny_masking, (7, 7), LoaderPlace(batch_size=2))
