"""Exponential moving average of the weights (DeiT's model EMA, optional in the seed's App. H recipe).

Kept in fp32 on every rank (ZeRO-1/2 keep the full weights on every rank, so every copy is the
same), updated after each optimizer step: ``ema ← d · ema + (1 - d) · w``. Its ``state_dict`` is
saved with each checkpoint's client state and restored on resume, so a resumed run continues the
same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightEMA:
    """The average of ``model``'s floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].mul_(self.decay).add_(value.detach().float(), alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = self.shadow.keys() - state.keys()
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
        for key, value in self.shadow.items():
            value.copy_(state[key])

    @contextmanager
    @torch.no_grad()
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` with the averaged weights inside the block, its own weights restored after."""
        own = model.state_dict()
        saved = {k: own[k].detach().clone() for k in self.shadow}
        for key, value in self.shadow.items():
            own[key].copy_(value)
        try:
            yield model
        finally:
            for key, value in saved.items():
                own[key].copy_(value)
