"""BEiT models: backbone, masked-image-modeling head, presets, format conversion."""

from __future__ import annotations

from typing import Any

from beit_ds.config import ConfigError, MIMConfig, ModelConfig
from beit_ds.config.presets import PRESETS
from beit_ds.models.beit import Beit
from beit_ds.models.classification import BeitForImageClassification, ClassifierOutput
from beit_ds.models.loading import load_backbone
from beit_ds.models.mim import BeitForMaskedImageModeling, MIMOutput

__all__ = [
    "Beit",
    "BeitForImageClassification",
    "BeitForMaskedImageModeling",
    "ClassifierOutput",
    "MIMOutput",
    "build_classifier",
    "build_mim_model",
    "build_model",
    "create_model",
    "list_models",
    "load_backbone",
    "model_config",
]


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(PRESETS)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The preset ``name`` with ``overrides`` applied (unknown name or key: ``ConfigError``)."""
    if name not in PRESETS:
        raise ConfigError(f"model name {name!r}: expected one of {', '.join(list_models())}")
    return PRESETS[name].replace(**overrides)


def build_model(cfg: ModelConfig) -> Beit:
    """A backbone (with classifier when ``cfg.num_classes > 0``) from its config section."""
    return Beit(cfg)


def build_mim_model(cfg: ModelConfig, mim: MIMConfig | None = None) -> BeitForMaskedImageModeling:
    """A backbone with [MASK] token and LM head for pre-training."""
    return BeitForMaskedImageModeling(cfg, mim or MIMConfig())


def build_classifier(
    cfg: ModelConfig,
    head_init_scale: float = 0.001,
    probe_layer: int | None = None,
    probe_pool: str = "mean",
) -> BeitForImageClassification:
    """A classifier for fine-tuning, or with ``probe_layer`` a linear probe on a frozen backbone
    (``probe_pool``: ``"mean"`` or ``"cls_mean"``)."""
    return BeitForImageClassification(cfg, head_init_scale, probe_layer, probe_pool)


def create_model(name: str, **overrides: Any) -> Beit:
    """``create_model("beit_base_patch16_224", drop_path_rate=0.2)``: a preset backbone."""
    return build_model(model_config(name, **overrides))
