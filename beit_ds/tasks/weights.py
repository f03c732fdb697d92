"""Starting weights for ``finetune.init`` (and the pictures of ``launch/visualize.py``) from any
source ``engine/weights.py`` reads. A checkpoint of a task whose model wraps the pre-trained one
(MIM + DINO: the MIM model under ``mim.``; segmentation: the backbone under ``backbone.``) gives
that model, as its export's ``model.safetensors`` does: the task's ``backbone_prefix`` says where.
"""

from __future__ import annotations

from pathlib import Path

import torch

from beit_ds.artifacts import RECIPE_JSON, WEIGHTS, ExportDir
from beit_ds.config import ConfigError, MIMConfig, ModelConfig
from beit_ds.engine.weights import read_raw_weights, to_our_layout
from beit_ds.models import Beit, build_mim_model, build_model, load_backbone
from beit_ds.tasks.exported import load_export
from beit_ds.tasks.registry import task_type

Tensors = dict[str, torch.Tensor]


def read_init_raw(spec: str, whole: str = "") -> tuple[Tensors, str]:
    """(state dict as the source holds it — of a wrapping task's checkpoint, the wrapped model,
    unless the checkpoint's kind is ``whole`` —, where it came from)."""
    sd, source, kind = read_raw_weights(spec)
    prefix = task_type(kind, f"finetune.init={spec!r}").backbone_prefix if kind not in (None, whole) else ""
    if prefix:
        sd = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return sd, source


def read_init_weights(spec: str) -> tuple[Tensors, str]:
    """``read_init_raw`` in our layout (timm / unilm / Hugging Face converted; one-line ``ConfigError``)."""
    sd, source = read_init_raw(spec)
    return to_our_layout(sd, spec), source


def is_export(path: str | Path) -> bool:
    """An export folder of beit_ds: its manifest, or (written before manifests) ``model.safetensors``
    next to ``recipe.json``."""
    export = ExportDir(path)
    return export.has_manifest or ((export.path / WEIGHTS).is_file() and (export.path / RECIPE_JSON).is_file())


def exported_backbone(weights: str) -> Beit:
    """The BEiT of the export folder ``weights``: its model, or the one a wrapping kind's model
    holds where the kind's ``backbone_prefix`` says (the DINO student's MIM model, a segmenter's
    backbone)."""
    export = ExportDir(weights)
    model = load_export(export.path)
    prefix = task_type(export.read_manifest().kind).backbone_prefix if export.has_manifest else ""
    if prefix:
        model = model.get_submodule(prefix.rstrip("."))
    if not isinstance(model, Beit):
        raise ConfigError(f"{weights}: not a BEiT export")
    return model.eval()


def model_to_inspect(weights: str, model_cfg: ModelConfig, mim: MIMConfig | None = None) -> Beit:
    """The model the pictures of ``launch/visualize.py`` look inside, in eval mode on the CPU.

    ``weights``: an export folder (its own architecture), a ``finetune.init`` source loaded into
    the ``model_cfg`` backbone (or, given ``mim`` and MIM weights, the whole MIM model), or ``""``
    for random initialisation (``torch.manual_seed`` decides it)."""
    if weights and is_export(weights):
        return exported_backbone(weights)
    if not weights:
        return (build_mim_model(model_cfg, mim) if mim else build_model(_backbone_cfg(model_cfg, {}))).eval()
    sd, source = read_init_weights(weights)
    if mim is not None and "lm_head.weight" in sd:
        model = build_mim_model(model_cfg, mim)
        model.load_state_dict(sd, strict=True)
        return model.eval()
    backbone = build_model(_backbone_cfg(model_cfg, sd))
    try:
        load_backbone(backbone, sd, "reset", source)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return backbone.eval()


def _backbone_cfg(cfg: ModelConfig, sd: Tensors) -> ModelConfig:
    """The backbone of ``cfg`` without a classifier, with the final norm ``sd`` has (fine-tuned
    weights carry ``fc_norm``, pre-trained ones ``norm``)."""
    return cfg.replace(num_classes=0, global_pool="avg" if "fc_norm.weight" in sd else "none")
