"""Parameter groups and optimizer settings (seed §5; App. H layer-wise lr decay).

Groups are built from the model's own metadata (``no_weight_decay()``, ``layer_id()``,
``num_layers``): biases, 1-d weights (norms, LayerScale) and the names ``no_weight_decay()``
gives get no weight decay — by default unilm's ``cls_token`` and ``pos_embed`` only, so
``mask_token`` and relative-position tables are decayed as in unilm (``model.wd_exempt``); with ``layer_decay < 1`` each layer's lr is scaled by
``layer_decay ** (num_layers - 1 - layer_id)``. The engine hands the groups to DeepSpeed, which
builds AdamW (torch's, or DeepSpeed's fused kernel on GPU; NVIDIA apex is never required).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class LayeredModel(Protocol):
    """What ``param_groups`` needs from a model (``Beit`` provides it)."""

    num_layers: int

    def no_weight_decay(self) -> set[str]: ...

    def layer_id(self, name: str) -> int: ...

    def named_parameters(self) -> Any: ...


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups ``{"params", "weight_decay", "lr_scale", "group_name"}``, frozen params left out.

    A model without BEiT's metadata (e.g. the dVAE) gets the ndim ≤ 1 rule and no layer decay.

    ``weight_decay`` is the initial value; ``apply_schedule`` rescales decayed groups later.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1.0 and not hasattr(model, "layer_id"):
        raise ValueError(f"optim.layer_decay={layer_decay}: {type(model).__name__} has no layers to decay")
    num_layers = getattr(model, "num_layers", 1)
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or name.endswith(".bias")
        layer = model.layer_id(name) if layer_decay < 1.0 else 0
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            scale = layer_decay ** (num_layers - 1 - layer) if layer_decay < 1.0 else 1.0
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "group_name": key,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr to ``lr · lr_scale`` and decayed groups' weight decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group.get("weight_decay", 0.0) > 0.0:
            group["weight_decay"] = weight_decay
