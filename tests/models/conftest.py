"""Shared by the model tests: randomised weights, so every parameter matters in a parity check."""

from __future__ import annotations

import torch
from torch import nn


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter ~ N(0, 0.5²): LayerScale, bias tables and norms all matter, features are O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()
