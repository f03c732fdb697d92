"""Roofline of a training step: the step's analytic matmul FLOPs against the machine's measured
fp32 matmul rate.

FLOP count (a multiply-add = 2 FLOPs; only matmuls, convolutions and attention products are
counted; layer norm, GELU, softmax, residuals and the optimizer are not), per image with
``T = 1 + N`` tokens, width ``D``, MLP width ``r·D``, patch size ``p``, ``C`` input channels:

* patch embedding: ``2 · N · (C·p²) · D``
* each of the ``L`` blocks: ``2·T·D·3D`` (qkv) + ``2·T·D·D`` (proj) + ``2·2·T·D·rD`` (MLP)
  + ``2·T·T·D`` (q·kᵀ) + ``2·T·T·D`` (softmax·v)
* LM head on ``M`` positions (the masked ones, or all N for a head that predicts every
  position): ``2 · M · D · V``

A training step (forward + backward) counts ``3 ×`` the forward FLOPs: the backward pass
computes a gradient for the input and one for the weight of every product, each as large as
the forward product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from beit_ds.config import ModelConfig


def forward_flops(cfg: ModelConfig, head_positions: float, vocab: int) -> float:
    """Forward matmul FLOPs of one image; ``head_positions``: LM-head rows per image."""
    n = cfg.num_patches
    t = n + 1
    d = cfg.embed_dim
    hidden = int(d * cfg.mlp_ratio)
    patch = 2 * n * cfg.in_chans * cfg.patch_size**2 * d
    block = 2 * t * d * (3 * d + d + 2 * hidden) + 4 * t * t * d
    head = 2 * head_positions * d * vocab
    return float(patch + cfg.depth * block + head)


def train_step_flops(cfg: ModelConfig, batch: int, head_rows: int, vocab: int) -> float:
    """Forward + backward FLOPs of a step over ``batch`` images with ``head_rows`` LM-head rows
    in total (e.g. the number of masked patches in the batch)."""
    return 3.0 * (batch * forward_flops(cfg, 0, vocab) + 2.0 * head_rows * cfg.embed_dim * vocab)


MATMUL_SIZE = 2048
MATMULS_PER_CALL = 4


def matmul_probe(dtype: torch.dtype = torch.float32) -> Callable[[int], None]:
    """A timing candidate (``harness.time_interleaved``): ``MATMULS_PER_CALL``
    ``2048 × 2048`` by ``2048 × 2048`` matmuls in ``dtype`` per call, timed alongside the steps
    it rates (bf16: the rate of a CPU's AMX / AVX512-BF16 units where it has them)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=dtype)

    def call(seed: int) -> None:
        for _ in range(MATMULS_PER_CALL):
            torch.mm(a, b)

    return call


def matmul_rate(seconds_per_call: float) -> float:
    """FLOP/s of the machine's matmul from the time of one ``matmul_probe`` call."""
    return MATMULS_PER_CALL * 2.0 * MATMUL_SIZE**3 / seconds_per_call
