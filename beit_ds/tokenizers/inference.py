"""Frozen tokenizer inference (seed §2.1: the tokenizer is fixed during pre-training): an encoder
compiled with its weights frozen as constants, shared by the DALL-E and our dVAE tokenizers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def compile_frozen(encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``encoder`` under ``torch.compile`` with Inductor's weight freezing (conv + ReLU fusion,
    pre-packed weights): inference only, compiled on the first call, recompiled on a dtype change.
    ``[B, C, S, S] -> `` what ``encoder`` returns."""
    import torch._inductor.config as inductor

    compiled = torch.compile(encoder)

    def run(x: torch.Tensor) -> torch.Tensor:
        # Inductor's documented CPU-inference switch, scoped to our graphs; in torch 2.14
        # ``torch.compile(options={"freezing": True})`` compiles without freezing (measured).
        with inductor.patch(freezing=True):
            return compiled(x)

    return run
