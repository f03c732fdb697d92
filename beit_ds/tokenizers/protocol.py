"""The visual-tokenizer interface (seed §2.1 "visual tokens"): images in, token ids out.

BEiT's pre-training targets are the ids a discrete VAE assigns to each cell of a ``h × w`` grid
over the tokenizer view (14 × 14 for a 112² view). Every tokenizer — the DALL-E-compatible one
in ``dalle.py`` and our trainable dVAE in ``dvae.py`` — satisfies ``VisualTokenizer`` and checks
its input with ``check_images`` so that a wrong view size or pixel preprocessing fails loudly
instead of silently producing meaningless targets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from beit_ds.config import TokenizerConfig

LOGIT_LAPLACE_EPS = 0.1
"""DALL-E's ``logit_laplace_eps``: ``map_pixels`` squeezes [0, 1] into [eps, 1 - eps]."""

PIXEL_RANGES: dict[str, tuple[float, float]] = {
    "dalle": (LOGIT_LAPLACE_EPS, 1.0 - LOGIT_LAPLACE_EPS),
    "raw": (0.0, 1.0),
}
"""Value range of each preprocessing's output; ``preprocess`` names a key of this dict."""

PREPROCESS_HINTS = {
    "dalle": "map_pixels (eps 0.1) of [0, 1] pixels, applied by the data pipeline",
    "raw": "[0, 1] pixels",
}


@runtime_checkable
class VisualTokenizer(Protocol):
    """What pre-training needs from a tokenizer.

    ``encode``: images ``[B, C, S, S]`` (``S = input_size``, preprocessed as ``preprocess``
    says) -> token ids ``LongTensor[B, h, w]`` in ``[0, vocab_size)``; runs under
    ``torch.no_grad`` on whatever device and dtype (fp32 / bf16) the tokenizer was moved to.
    ``decode``: token ids ``[B, h, w]`` -> images ``[B, C, S, S]`` in [0, 1]; raises
    ``NotImplementedError`` when the tokenizer has no decoder. ``grid_size`` = ``(h, w)``.
    ``to``: moved to a device / dtype (as ``nn.Module.to``). ``preprocess`` is the view of its
    ``config.tokenizer.TOKENIZERS`` entry.
    """

    vocab_size: int
    input_size: int
    in_channels: int
    preprocess: str

    @property
    def grid_size(self) -> tuple[int, int]: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


TokenizerLoader = Callable[[Path, TokenizerConfig], nn.Module]
"""``load_tokenizer(path, cfg)`` of ``beit_ds/tokenizers/<name>.py``: the tokenizer ``cfg.name``
names from its file ``path`` (``cfg.path`` resolved), at ``cfg.image_size`` (compiled with
``cfg.compile``); missing file: ``FileNotFoundError``, a file of another kind: ``ValueError``."""


CHECK_EVERY_BATCH_ENV = "BEIT_DS_CHECK_EVERY_BATCH"
"""Set to 1 to range-check every batch a tokenizer encodes (debugging), not only its first."""


def check_images(
    images: torch.Tensor, size: int, channels: int, preprocess: str, who: str, owner: object = None
) -> None:
    """Raise a one-line ``ValueError`` unless ``images`` is a float ``[B, channels, size, size]``
    batch whose values lie in the range ``preprocess`` produces (NaN/inf fail too).

    The range check waits for the device (``aminmax().item()``); with ``owner`` (the tokenizer)
    it runs on the owner's first batch only, until one passes (house style rule 24: no host sync
    per micro-step), or on every batch with ``BEIT_DS_CHECK_EVERY_BATCH=1``. Shapes and dtypes are
    checked on every batch (they cost nothing).
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = f"{images.dtype} tensor" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{who}: expected a floating-point image tensor, got a {kind}")
    expected = (channels, size, size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{who}: expected images [B, {channels}, {size}, {size}], got {list(images.shape)}"
            f" (the tokenizer view must be {size}x{size} with {channels} channels)"
        )
    every = os.environ.get(CHECK_EVERY_BATCH_ENV, "") not in ("", "0")
    if owner is not None and getattr(owner, "_values_checked", False) and not every:
        return
    lo, hi = PIXEL_RANGES[preprocess]
    tol = 1e-3 + 2 * torch.finfo(images.dtype).eps
    low, high = (v.item() for v in torch.aminmax(images.detach().float()))
    if not (low >= lo - tol and high <= hi + tol):
        raise ValueError(
            f"{who}: expected values in [{lo:g}, {hi:g}] ({PREPROCESS_HINTS[preprocess]}),"
            f" got min {low:.4g}, max {high:.4g}"
        )
    if owner is not None:
        object.__setattr__(owner, "_values_checked", True)  # a plain attribute, never state


def check_tokens(tokens: torch.Tensor, vocab_size: int, who: str) -> None:
    """Raise a one-line ``ValueError`` unless ``tokens`` is an integer ``[B, h, w]`` tensor of ids
    in ``[0, vocab_size)``."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.ndim != 3:
        what = f"{tokens.dtype} {list(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens)
        raise ValueError(f"{who}: expected integer token ids [B, h, w], got {what}")
    low, high = (v.item() for v in torch.aminmax(tokens))
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{who}: token ids must be in [0, {vocab_size}), got min {low}, max {high}")


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """DALL-E's input map: [0, 1] pixels -> [eps, 1 - eps] (any shape)."""
    return (1.0 - 2.0 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Inverse of ``map_pixels``, clamped to [0, 1] (any shape)."""
    return ((x - eps) / (1.0 - 2.0 * eps)).clamp(0.0, 1.0)
