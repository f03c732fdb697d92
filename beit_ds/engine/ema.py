"""Exponential moving average of the weights (DeiT's model EMA, optional in the seed's App. H recipe).

Kept in fp32 on every rank (ZeRO-1/2 keep the full weights on every rank, so every copy is the
same), updated after each optimizer step: ``ema ← d · ema + (1 - d) · w``. Under bf16 / fp16 ``w``
is DeepSpeed's fp32 master copy of each trained parameter (``fp32_master``: gathered from the ZeRO
partitions, a collective every rank runs in the same order), not the half-precision module weight:
a bf16 weight moves in steps of 2⁻⁸ of its size, so an average of module weights would lose every
update smaller than that (unilm / timm's ModelEma averaged the fp32 weights of an AMP model).
Frozen parameters and buffers have no master and are read from the module. Its ``state_dict`` is
saved with each checkpoint's client state and restored on resume, so a resumed run continues the
same average.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

MasterFn = Callable[[nn.Parameter], "torch.Tensor | None"]


def fp32_master(param: nn.Parameter) -> torch.Tensor | None:
    """DeepSpeed's full fp32 master copy of a half-precision ``param`` (None for fp32 weights,
    frozen ones, or a model outside DeepSpeed)."""
    if param.dtype == torch.float32 or not param.requires_grad:
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    return safe_get_full_fp32_param(param)


def _weights(model: nn.Module, master: MasterFn) -> dict[str, torch.Tensor]:
    """``model``'s floating-point state, trained parameters from their fp32 master when there is one."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    for name, param in model.named_parameters():
        high = master(param)
        if high is not None and name in state:
            state[name] = high.view(param.shape)
    return state


class WeightEMA:
    """The average of ``model``'s floating-point parameters (fp32 masters) and buffers."""

    def __init__(self, model: nn.Module, decay: float, master: MasterFn = fp32_master) -> None:
        self.decay = decay
        self.master = master
        self.shadow = {k: v.detach().float().clone() for k, v in _weights(model, master).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current (master) weights."""
        for key, value in _weights(model, self.master).items():
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
