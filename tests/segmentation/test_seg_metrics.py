"""Dataset-level mIoU / mAcc / aAcc against a confusion matrix computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from beit_ds.segmentation.metrics import IoUAccumulator, confusion_matrix

# one 2 x 4 image, 3 classes; the label 255 pixel (row 1, col 2) is ignored
LABEL = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 0]]])
PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
# valid (label, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0)
# rows = label, columns = prediction
CONFUSION = [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
# intersect = [2, 2, 1], label area = [3, 2, 2], pred area = [3, 3, 1]
# union = label + pred - intersect = [4, 3, 2]
# IoU = [2/4, 2/3, 1/2] -> mIoU = (0.5 + 0.666667 + 0.5) / 3 = 0.555556
# Acc = [2/3, 2/2, 1/2] -> mAcc = (0.666667 + 1 + 0.5) / 3 = 0.722222
# aAcc = 5 / 7 = 0.714286
MIOU, MACC, AACC = 55.555556, 72.222222, 71.428571


def test_confusion_matrix_by_hand() -> None:
    assert confusion_matrix(PRED, LABEL, 3).tolist() == CONFUSION


def test_metrics_by_hand() -> None:
    acc = IoUAccumulator(3)
    acc.update(PRED, LABEL)
    m = acc.compute()
    assert m.miou == pytest.approx(MIOU, abs=1e-4)
    assert m.macc == pytest.approx(MACC, abs=1e-4)
    assert m.aacc == pytest.approx(AACC, abs=1e-4)
    assert m.per_class_iou == pytest.approx([50.0, 66.666667, 50.0], abs=1e-4)
    assert m.per_class_acc == pytest.approx([66.666667, 100.0, 50.0], abs=1e-4)
    assert m.images == 1
    assert acc.areas()["union"].tolist() == [4.0, 3.0, 2.0]


def test_ignored_pixels_count_nowhere() -> None:
    # any prediction at the ignored pixel, or a whole ignored image, changes nothing
    pred = PRED.clone()
    pred[0, 1, 2] = 1
    assert confusion_matrix(pred, LABEL, 3).tolist() == CONFUSION
    acc = IoUAccumulator(3)
    acc.update(pred, LABEL)
    acc.update(torch.zeros(1, 2, 4, dtype=torch.long), torch.full((1, 2, 4), 255))
    assert acc.confusion.tolist() == CONFUSION
    assert acc.compute().miou == pytest.approx(MIOU, abs=1e-4)


def test_absent_class_left_out_of_the_means() -> None:
    # class 3 is in neither labels nor predictions: NaN, and the means are those of 3 classes
    acc = IoUAccumulator(4)
    acc.update(PRED, LABEL)
    m = acc.compute()
    assert math.isnan(m.per_class_iou[3]) and math.isnan(m.per_class_acc[3])
    assert m.miou == pytest.approx(MIOU, abs=1e-4) and m.macc == pytest.approx(MACC, abs=1e-4)
    assert "| c3 | n/a | n/a |" in m.table(["c0", "c1", "c2", "c3"])


def test_class_only_predicted_counts_zero_iou() -> None:
    # pixel (0,0) predicted 3 (label 0): IoU_3 = 0 / 1 is in the mean, Acc_3 = 0 / 0 is not.
    # IoU = [1/4, 2/3, 1/2, 0] -> mIoU = 1.416667 / 4 = 0.354167
    # Acc = [1/3, 1, 1/2, NaN] -> mAcc = 1.833333 / 3 = 0.611111; aAcc = 4 / 7
    pred = PRED.clone()
    pred[0, 0, 0] = 3
    acc = IoUAccumulator(4)
    acc.update(pred, LABEL)
    m = acc.compute()
    assert m.per_class_iou[3] == 0.0 and math.isnan(m.per_class_acc[3])
    assert m.miou == pytest.approx(35.416667, abs=1e-4)
    assert m.macc == pytest.approx(61.111111, abs=1e-4)
    assert m.aacc == pytest.approx(57.142857, abs=1e-4)


# image A: label 0 0 0 0, pred 0 0 0 1 -> per image IoU = [3/4, 0/1] -> 0.375
# image B: label 1 1 1 1, pred 1 1 1 1 -> per image IoU = [NaN, 1]   -> 1.0
# per-image mean = 0.6875; dataset: confusion [[3, 1], [0, 4]],
# IoU = [3/(4+3-3), 4/(4+5-4)] = [0.75, 0.8] -> mIoU = 0.775
IMAGE_A = (torch.tensor([[[0, 0, 0, 1]]]), torch.tensor([[[0, 0, 0, 0]]]))
IMAGE_B = (torch.tensor([[[1, 1, 1, 1]]]), torch.tensor([[[1, 1, 1, 1]]]))


def test_dataset_level_not_per_image_mean() -> None:
    two = IoUAccumulator(2)
    two.update(*IMAGE_A)
    two.update(*IMAGE_B)
    one = IoUAccumulator(2)
    one.update(torch.cat([IMAGE_A[0], IMAGE_B[0]]), torch.cat([IMAGE_A[1], IMAGE_B[1]]))
    assert two.confusion.tolist() == one.confusion.tolist() == [[3, 1], [0, 4]]
    assert two.compute().miou == pytest.approx(77.5) and one.compute().images == 2
    per_image = []
    for pred, label in (IMAGE_A, IMAGE_B):
        acc = IoUAccumulator(2)
        acc.update(pred, label)
        per_image.append(acc.compute().miou)
    assert per_image == pytest.approx([37.5, 100.0])
    assert sum(per_image) / 2 == pytest.approx(68.75) != two.compute().miou


def test_table_lists_every_class_and_the_means() -> None:
    acc = IoUAccumulator(3)
    acc.update(PRED, LABEL)
    table = acc.table(["road", "sky", "car"])
    assert "| sky | 66.67 | 100.00 |" in table
    assert "| **mean** | **55.56** | **72.22** |" in table
    assert "aAcc 71.43 over 1 images" in table
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        acc.table(["road", "sky"])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        IoUAccumulator(3).update(PRED, LABEL[:, :1])


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        acc = IoUAccumulator(2)
        acc.update(*(IMAGE_A if rank == 0 else IMAGE_B))
        acc.all_reduce()
        m = acc.compute()
        torch.save({"confusion": acc.confusion, "miou": m.miou, "images": m.images}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["confusion"].tolist() == [[3, 1], [0, 4]]
        assert got["miou"] == pytest.approx(77.5) and got["images"] == 2
