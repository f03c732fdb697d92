"""Parameter groups and optimizer settings (seed §5; App. H layer-wise lr decay).

Groups are built from the model's own metadata (``no_weight_decay()``, ``layer_id()``,
``num_layers``): biases, 1-d weights (norms, LayerScale) and the names ``no_weight_decay()``
gives get no weight decay — by default unilm's ``cls_token`` and ``pos_embed`` only, so
``mask_token`` and relative-position tables are decayed as in unilm (``model.wd_exempt``); with
``layer_decay < 1`` each layer's lr is scaled by ``layer_decay ** (num_layers - 1 - layer_id)``.
The metadata is looked up on the backbone wherever it sits in the model (``layered_submodules``),
so a wrapper of the backbone gets the backbone's groups. The engine hands the groups to DeepSpeed, which
builds AdamW (torch's, or DeepSpeed's fused kernel on GPU; NVIDIA apex is never required).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def layered_submodules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` for the outermost modules (``model`` itself included, prefix ``""``)
    that carry layer metadata (``layer_id`` and ``num_layers``, as ``Beit`` does): the backbone of
    a wrapper (backbone + decoder, student + projection head), or the model itself."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not (callable(getattr(module, "layer_id", None)) and hasattr(module, "num_layers")):
            continue
        if not any(p == "" or name.startswith(p + ".") for p, _ in found):  # inside one already found
            found.append((name, module))
    return found


def _owner(name: str, layered: list[tuple[str, nn.Module]]) -> tuple[str, nn.Module | None, str]:
    """The layered module holding parameter ``name``, with the name relative to it."""
    for prefix, module in layered:
        if prefix == "":
            return prefix, module, name
        if name.startswith(prefix + "."):
            return prefix, module, name[len(prefix) + 1 :]
    return "", None, name


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names ``model`` and its layered submodules exempt from weight decay by name
    (``no_weight_decay()``, each relative to its own module)."""
    names: set[str] = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()  # type: ignore[operator]
    for prefix, module in layered_submodules(model):
        if prefix and hasattr(module, "no_weight_decay"):
            names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}  # type: ignore[operator]
    return names


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups ``{"params", "weight_decay", "lr_scale", "group_name"}``, frozen params left out.

    Metadata composes (house style rule 23): a parameter inside a layered submodule (a ``Beit``
    anywhere in ``model``) gets that module's no-decay names and layer id, so a wrapper of the
    backbone gets, per backbone parameter, the groups of the backbone alone; the wrapper's own
    parameters (a decoder, a projection head) are the last layer (lr scale 1), decayed by the
    ndim ≤ 1 / ``.bias`` rule. A model without layers (e.g. the dVAE) gets that rule and no decay.
    Several layered submodules: each scales by its own depth, groups named by its prefix.
    Parameters whose names start with a key of ``model.own_param_groups()`` (``{name prefix:
    label}``) get groups of their own, named ``label.…``, so that their optimizer state can be
    handled apart (``restart_groups``).

    ``weight_decay`` is the initial value; ``apply_schedule`` rescales decayed groups later.
    """
    layered = layered_submodules(model)
    if layer_decay < 1.0 and not layered:
        raise ValueError(f"optim.layer_decay={layer_decay}: {type(model).__name__} has no layers to decay")
    skip = no_weight_decay_names(model)
    own: dict[str, str] = model.own_param_groups() if hasattr(model, "own_param_groups") else {}  # type: ignore[operator]
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name in skip or name.endswith(".bias")
        prefix, owner, relative = _owner(name, layered)
        if owner is None and len(layered) == 1:  # beside the one backbone: its last layer
            (prefix, owner), relative = layered[0], None  # type: ignore[assignment]
        num_layers = int(owner.num_layers) if owner is not None and layer_decay < 1.0 else 1  # type: ignore[arg-type]
        layer = num_layers - 1 if owner is None or relative is None or num_layers == 1 else int(owner.layer_id(relative))  # type: ignore[operator]
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        if len(layered) > 1:
            key = f"{prefix if owner is not None else 'rest'}.{key}"
        label = next((label for start, label in own.items() if name.startswith(start)), None)
        if label is not None:
            key = f"{label}.{key}"
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


def base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16), which hold it as ``.optimizer``."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{type(optimizer).__name__}: no torch optimizer inside")
    return optimizer


def restart_groups(optimizer: Any, label: str) -> int:
    """Restart the AdamW state of the groups named ``label.…`` (``param_groups``' ``own_param_groups``):
    moments zeroed and step count 0, so that their next update is a fresh AdamW's first one. The
    state is per tensor the optimizer holds: a parameter (DeepSpeed stage 0 in fp32) or a group's
    flat fp32 partition (ZeRO-1/2, bf16), which is why such parameters need groups of their own.
    Returns the number of tensors restarted."""
    inner = base_optimizer(optimizer)
    count = 0
    for group in inner.param_groups:
        if not str(group.get("group_name", "")).startswith(label + "."):
            continue
        if "step" in group:  # optimizers that count steps per group
            group["step"] = 0
        for param in group["params"]:
            state = inner.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    value.zero_()
                elif key == "step":
                    state[key] = 0
            count += bool(state)
    return count
