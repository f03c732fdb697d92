"""Drop path under ``torch.compile``: one graph (no data-dependent shape), each sample either
skips its branch or adds it scaled by 1/(1-p), as the eager CPU path does."""

from __future__ import annotations

import pytest
import torch

from beit_ds.models.layers import DropPath


@pytest.mark.slow  # compiling: about a minute on a busy 2-core machine
def test_drop_path_residual_compiles_fullgraph_as_a_mask():
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    x = torch.randn(64, 5, 8)

    def residual(x: torch.Tensor) -> torch.Tensor:
        return drop.residual(x, lambda t: 2.0 * t)

    out = torch.compile(residual, fullgraph=True)(x)
    kept = torch.isclose(out, x + 4.0 * x).flatten(1).all(1)
    dropped = torch.isclose(out, x).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(kept.sum()) < 64
