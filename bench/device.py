"""The device a benchmark runs on: its name, memory and the dense bf16 / fp16 tensor-core peak that
MFU divides by (``bench/gpu_suite.py``, ``bench/gpu_pretrain.py``, ``experiments/cifar10/gpu_study.py``).

Peaks are the vendors' datasheet figures without sparsity, in TFLOP/s, looked up by the CUDA device
name (first match in ``PEAK_TFLOPS``'s order, so the specific names come before the generic ones).
A device that is not in the table has no peak: its MFU is reported as ``None``, never guessed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# (substring of torch.cuda.get_device_name(), dense bf16/fp16 TFLOP/s); specific names first
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 SXM", 989.0),
    ("H100 80GB HBM3", 989.0),  # the SXM board's CUDA name
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 756.0),  # an H100 of unknown form factor: the lower figure
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),  # fp16 tensor cores; no bf16 units (bf16 runs emulated)
    ("T4", 65.0),
)


@dataclass(frozen=True)
class Device:
    """``name`` (CUDA device name, or ``"cpu"``), ``memory_gib`` (None on CPU), ``peak_tflops`` (None
    when the device is not in the table: no MFU), and ``kind`` (``"cuda"`` / ``"cpu"``)."""

    kind: str
    name: str
    memory_gib: float | None
    peak_tflops: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def peak_tflops(name: str) -> float | None:
    """The dense bf16 / fp16 peak of the CUDA device called ``name``, or None when unknown."""
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), None)


def detect(given_tflops: float | None = None) -> Device:
    """This process's device: CUDA device 0 when there is one, else the CPU (no peak: a CPU's
    matmul rate is measured by the benchmark that needs it). ``given_tflops`` overrides the table."""
    if not torch.cuda.is_available():
        return Device("cpu", "cpu", None, given_tflops)
    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    return Device("cuda", name, props.total_memory / 2**30, given_tflops or peak_tflops(name))
