"""Semantic segmentation on the BEiT backbone (seed §3.2, App. A, B, I): dataset-level
mIoU as mmseg computes it (``metrics``) and whole / sliding-window / multi-scale + flip inference
(``inference``)."""

from beit_ds.segmentation.inference import predict, slide_inference, whole_inference
from beit_ds.segmentation.metrics import IoUAccumulator, SegMetrics, confusion_matrix

__all__ = [
    "IoUAccumulator",
    "SegMetrics",
    "confusion_matrix",
    "predict",
    "slide_inference",
    "whole_inference",
]
