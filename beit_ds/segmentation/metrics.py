"""Dataset-level segmentation metrics as mmseg reports them (seed §3.2, Tables 3-5: ADE20K mIoU).

Per class c, the intersection I_c, the union U_c, the predicted area P_c and the label area L_c are
summed over the whole evaluation set (and over ranks) before any ratio is taken; then
IoU_c = I_c / U_c, Acc_c = I_c / L_c, aAcc = ΣI / ΣL, mIoU = nanmean(IoU), mAcc = nanmean(Acc).
A class absent from both predictions and labels (U_c = 0) has IoU NaN and is left out of the mean;
a class absent from the labels has Acc NaN (mmseg's ``intersect_and_union`` /
``total_area_to_metrics``). Pixels labelled ``ignore_index`` count nowhere.

torchmetrics' ``MeanIoU`` averages a per-image IoU; this is not that metric: one large image and
one small one weigh by their pixels here.

Everything derives from one ``C x C`` confusion matrix (rows = label, columns = prediction),
accumulated in int64 on the predictions' device without a host sync. Image/label pairs that could
not be read are never scored (nor replaced by others); they are counted beside the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from beit_ds.distributed import all_reduce_sum


def confusion_matrix(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Counts ``[C, C]`` int64 of (label, prediction) pairs over the valid pixels of ``pred`` and
    ``label`` (same shape, e.g. ``[B, H, W]``, integer class ids).

    A pixel is valid when its label is not ``ignore_index`` and both ids lie in ``[0, C)``;
    invalid pixels go to a discard bin, so the shapes never depend on the data (no host sync;
    ``scatter_add_`` rather than ``bincount``, which reads its input's max on CUDA)."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    c = num_classes
    pred, label = pred.long(), label.long()
    valid = (label != ignore_index) & (label >= 0) & (label < c) & (pred >= 0) & (pred < c)
    index = torch.where(valid, label * c + pred, torch.full_like(label, c * c)).flatten()
    counts = torch.zeros(c * c + 1, dtype=torch.int64, device=pred.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[: c * c].view(c, c)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


@dataclass(frozen=True)
class SegMetrics:
    """mIoU, mAcc and aAcc in percent (x100, as mmseg prints them); per-class IoU and Acc in
    percent with NaN for a class that is absent (see the module docstring); ``images`` evaluated,
    ``skipped`` pairs that could not be read (not scored)."""

    miou: float
    macc: float
    aacc: float
    per_class_iou: list[float]
    per_class_acc: list[float]
    images: int
    skipped: int = 0

    def as_dict(self) -> dict[str, float]:
        """``{"mIoU", "mAcc", "aAcc", "skipped"}`` for a metric writer."""
        return {"mIoU": self.miou, "mAcc": self.macc, "aAcc": self.aacc, "skipped": float(self.skipped)}

    def table(self, class_names: Sequence[str]) -> str:
        """A markdown table of per-class IoU / Acc (percent, ``n/a`` for an absent class), then
        the means and the overall accuracy."""
        if len(class_names) != len(self.per_class_iou):
            raise ValueError(f"{len(class_names)} class names for {len(self.per_class_iou)} classes")
        lines = ["| Class | IoU | Acc |", "|:--|--:|--:|"]
        for name, iou, acc in zip(class_names, self.per_class_iou, self.per_class_acc):
            lines.append(f"| {name} | {_fmt(iou)} | {_fmt(acc)} |")
        lines.append(f"| **mean** | **{_fmt(self.miou)}** | **{_fmt(self.macc)}** |")
        skipped = f" ({self.skipped} unreadable pairs skipped, not scored)" if self.skipped else ""
        lines.append(f"\naAcc {_fmt(self.aacc)} over {self.images} images{skipped}")
        return "\n".join(lines)


class IoUAccumulator:
    """Sums the confusion matrix of every batch of an evaluation set (mmseg's dataset-level mIoU).

    ``update`` once per batch on any device, ``skip`` per pair that could not be read,
    ``all_reduce`` once after the last batch when distributed, then ``compute``."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: expected a positive integer")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.images = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped = 0

    def reset(self) -> None:
        self.confusion.zero_()
        self.images.zero_()
        self.skipped = 0

    def skip(self, pairs: int = 1) -> None:
        """Count ``pairs`` image/label pairs left out because they could not be read."""
        self.skipped += pairs

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add predictions ``pred [B, H, W]`` (class ids, e.g. ``logits.argmax(1)``) against
        ``label [B, H, W]``; the sums move to ``pred``'s device if they are elsewhere."""
        if pred.dim() != 3:
            raise ValueError(f"prediction shape {tuple(pred.shape)}: expected [B, H, W]")
        if self.confusion.device != pred.device:
            self.confusion = self.confusion.to(pred.device)
            self.images = self.images.to(pred.device)
        self.confusion += confusion_matrix(pred, label.to(pred.device), self.num_classes, self.ignore_index)
        self.images += pred.shape[0]

    def all_reduce(self) -> None:
        """Sum the confusion matrix, image and skip counts over ranks (one collective; no-op alone)."""
        skipped = torch.full((1,), self.skipped, dtype=torch.int64, device=self.images.device)
        flat = torch.cat([self.confusion.flatten(), self.images.view(1), skipped])
        flat = all_reduce_sum(flat)
        c = self.num_classes
        self.confusion = flat[: c * c].view(c, c).clone()
        self.images = flat[c * c].clone()
        self.skipped = int(flat[c * c + 1])

    def areas(self) -> dict[str, torch.Tensor]:
        """Per-class ``intersect``, ``union``, ``pred`` and ``label`` areas ``[C]`` (float64, CPU)."""
        cm = self.confusion.double().cpu()
        inter, pred, label = cm.diagonal(), cm.sum(0), cm.sum(1)
        return {"intersect": inter, "union": pred + label - inter, "pred": pred, "label": label}

    def compute(self) -> SegMetrics:
        """The metrics of what was accumulated (call ``all_reduce`` first when distributed)."""
        a = self.areas()
        iou = a["intersect"] / a["union"]  # 0 / 0 = NaN: absent class
        acc = a["intersect"] / a["label"]
        aacc = a["intersect"].sum() / a["label"].sum()
        return SegMetrics(
            miou=float(iou.nanmean()) * 100,
            macc=float(acc.nanmean()) * 100,
            aacc=float(aacc) * 100,
            per_class_iou=(iou * 100).tolist(),
            per_class_acc=(acc * 100).tolist(),
            images=int(self.images),
            skipped=self.skipped,
        )

    def table(self, class_names: Sequence[str]) -> str:
        """``compute().table(class_names)``: the per-class markdown table."""
        return self.compute().table(class_names)
