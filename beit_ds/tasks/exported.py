"""Rebuild a model from an export folder (what a task's ``export`` wrote): its manifest
``export.json`` (``artifacts.ExportDir``) names the kind, and that kind's task, found through the
registry, rebuilds the model from the folder's ``recipe.json`` and weights (``Task.load_exported``).

Folders written before exports had a manifest are read by the rules of their time, here and only
here: ``tokenizer.safetensors`` alone is a dVAE (at the default view size: no recipe was
written); else ``model.safetensors`` + ``recipe.json``, the architecture from the recipe's
``model`` section and which model it is from the weights themselves: ``lm_head.*`` is the
pre-training model (its ``mim`` section), ``head.*`` a classifier — a linear probe when blocks or
the final norms are absent (its tapped block is the number of blocks kept, its pooling the head's
width) — and neither a bare backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from beit_ds.artifacts import EMA_WEIGHTS, MANIFEST, RECIPE_JSON, TOKENIZER_WEIGHTS, WEIGHTS, ExportDir
from beit_ds.config import ConfigError, DataConfig, MIMConfig, ModelConfig, TokenizerConfig
from beit_ds.config_io import build_dataclass
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.models import Beit, BeitForImageClassification, BeitForMaskedImageModeling
from beit_ds.tasks.registry import task_type
from beit_ds.tokenizers import DiscreteVAE, load_dvae

Tensors = dict[str, torch.Tensor]


def load_export(directory: str | Path, ema: bool = False) -> nn.Module:
    """The model of the export folder ``directory``, loaded strictly and in eval mode, as its
    manifest's kind rebuilds it: the MIM model (pre-training), the classifier or probe, the
    segmenter, the DINO student (MIM model + head), the tokenizer's dVAE, the VQ-KD. ``ema``: the averaged
    weights where the kind keeps them (fine-tuning's EMA, DINO's teacher). What is no export of
    beit_ds, or lacks what is asked, is a one-line ``ConfigError``."""
    export = ExportDir(directory)
    if not (export.path / MANIFEST).exists():
        return load_unlisted(export, ema)  # written before exports had a manifest
    manifest = export.read_manifest()
    return task_type(manifest.kind, str(export.path / MANIFEST)).load_exported(export, ema)


def no_ema(export: ExportDir, kind: str, ema: bool) -> None:
    """One line for ``ema`` asked of an export whose kind keeps no averaged weights."""
    if ema:
        raise ConfigError(f"{export.path}: a {kind} export has no EMA weights (expected ema=False)")


def load_tokenizer(path: Path, image_size: int) -> DiscreteVAE:
    """The frozen dVAE of the ``save_dvae`` file ``path`` for ``image_size``² views (one line on error)."""
    try:
        return load_dvae(path, image_size)
    except (OSError, ValueError) as err:
        raise ConfigError(str(err)) from None


def load_unlisted(export: ExportDir, ema: bool) -> nn.Module:
    """An export folder without a manifest, by the rules of its time (module docstring)."""
    if (export.path / TOKENIZER_WEIGHTS).is_file() and not (export.path / WEIGHTS).is_file():
        no_ema(export, "tokenizer", ema)
        return load_tokenizer(export.path / TOKENIZER_WEIGHTS, TokenizerConfig().image_size)
    for name in (EMA_WEIGHTS if ema else WEIGHTS, RECIPE_JSON):
        if not (export.path / name).is_file():
            raise ConfigError(f"{export.path}: no {MANIFEST}, no {name} (not an export folder of beit_ds)")
    recipe = export.read_recipe()
    cfg = build_dataclass(ModelConfig, recipe.get("model"), "model")
    sd = export.read_weights(EMA_WEIGHTS if ema else WEIGHTS)
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


def export_tokenizer(
    saved: SavedCheckpoint, out_dir: Path, data: DataConfig, save: Callable[[Path], object], report: Callable[[], object]
) -> list[Path]:
    """A trained tokenizer's export: ``tokenizer.safetensors`` (``save(path)``) and, when the recipe's
    ``data`` is readable here, ``report.json`` (``report()``); then ``recipe.json`` and ``export.json``."""
    export = ExportDir(out_dir).create()
    paths = [export.write_file(TOKENIZER_WEIGHTS, save)]
    if data.source == "demo" or Path(data.path).exists():  # readable here
        paths.append(export.write_json("report.json", report()))
    export.finish(saved.kind, saved.recipe, source=str(saved.tag_dir))
    return paths
