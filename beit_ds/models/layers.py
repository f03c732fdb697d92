"""Generic ViT building blocks (seed §2.1): patch embedding, MLP, stochastic depth.

Nothing here is BEiT-specific; BEiT's attention lives in ``attention.py`` and its block in
``beit.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping ``patch_size`` patches and embed each linearly.

    ``[B, C, H, W] -> [B, N, D]`` with ``N = (H / p) · (W / p)``; ``img_size`` / ``grid_size`` /
    ``num_patches`` describe the size the model was built for, any multiple of ``p`` runs.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def dynamic_grid(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid of an ``h×w`` input (each a multiple of ``patch_size``)."""
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"input image is {h}x{w}: expected sides that are multiples of model.patch_size={p}"
                f" (built for {self.img_size}x{self.img_size})"
            )
        return (h // p, w // p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, (H/p)·(W/p), D]`` for any ``H, W`` that are multiples of ``p``."""
        self.dynamic_grid(*x.shape[-2:])
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` feed-forward network of a Transformer block."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` (training only).

    ``residual(x, branch)`` is the way blocks use it: ``x + self(branch(x))``, with the branch
    run only on the samples that are kept (on CPU), so dropped samples cost no compute.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample ``[B, 1, ...]`` 1 (kept) / 0 (dropped) draw; None in eval or when ``p = 0``."""
        if self.p == 0.0 or not self.training:
            return None
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        if torch.compiler.is_compiling():  # bernoulli_ would pin p: one graph per block's rate
            return (torch.rand(shape, dtype=x.dtype, device=x.device) < 1.0 - self.p).to(x.dtype)
        return x.new_empty(shape).bernoulli_(1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.keep_mask(x)
        return x if mask is None else x * mask.div_(1.0 - self.p)

    def residual(self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``x + self(branch(x))`` for ``x [B, ...]``, the same draw and value as that expression.

        On CPU the branch sees only the kept samples ``x[kept]`` (so a step with drop-path rate
        p saves about p of the branch FLOPs) and its output is added back with ``index_add``;
        an all-dropped batch still runs the branch on zero samples, so every parameter gets a
        (zero) gradient. Elsewhere, and under ``torch.compile`` (no data-dependent shape in the
        graph), the mask multiplies the branch output: no host sync.
        """
        mask = self.keep_mask(x)
        if mask is None:
            return x + branch(x)
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return x + branch(x) * mask.div_(1.0 - self.p)
        scale = 1.0 / (1.0 - self.p)
        kept = mask.flatten().nonzero().flatten()
        if kept.numel() == x.shape[0]:
            return x.add(branch(x), alpha=scale)
        return x.index_add(0, kept, branch(x.index_select(0, kept)), alpha=scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic-depth rates, 0 for the first block, ``rate`` for the last."""
    if depth == 1:
        return [rate]
    return [rate * i / (depth - 1) for i in range(depth)]
