"""Rebuild a model from an export folder (``engine/export.py``'s ``export_checkpoint``, or
fine-tuning's ``export_classifier``): ``model.safetensors`` in our layout + ``recipe.json``.

The architecture comes from the recipe's ``model`` section; which model it is comes from the
weights themselves: ``lm_head.*`` is the pre-training model (its ``mim`` section), ``head.*`` a
classifier — a linear probe when blocks or the final norms are absent (its tapped block is the
number of blocks kept, its pooling the head's width) — and neither a bare backbone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from beit_ds.config import MIMConfig, ModelConfig
from beit_ds.config_io import build_dataclass
from beit_ds.models import Beit, BeitForImageClassification, BeitForMaskedImageModeling

Tensors = dict[str, torch.Tensor]


def load_export(directory: str | Path, ema: bool = False) -> nn.Module:
    """The model in ``directory`` (``model.safetensors``; ``ema``: ``model_ema.safetensors``),
    loaded strictly and in eval mode; a missing file is a one-line ``FileNotFoundError``."""
    directory = Path(directory)
    weights = directory / ("model_ema.safetensors" if ema else "model.safetensors")
    for path in (weights, directory / "recipe.json"):
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {path.name} (not an export folder of beit_ds)")
    recipe: dict[str, Any] = json.loads((directory / "recipe.json").read_text())
    cfg = build_dataclass(ModelConfig, recipe.get("model"), "model")
    sd = load_file(weights)
    if "lm_head.weight" in sd:
        model: nn.Module = BeitForMaskedImageModeling(
            cfg, build_dataclass(MIMConfig, recipe.get("mim"), "mim")
        )
    elif "head.weight" in sd:
        model = _classifier(cfg, sd)
    else:
        model = Beit(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _classifier(cfg: ModelConfig, sd: Tensors) -> BeitForImageClassification:
    """A fine-tuned classifier, or the linear probe whose pruned layout ``sd`` has."""
    blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    has_norm = any(k.startswith(("norm.", "fc_norm.")) for k in sd)
    if blocks == cfg.depth and has_norm:
        return BeitForImageClassification(cfg)
    pool = "cls_mean" if sd["head.weight"].shape[1] == 2 * cfg.embed_dim else "mean"
    return BeitForImageClassification(cfg, probe_layer=blocks, probe_pool=pool)
