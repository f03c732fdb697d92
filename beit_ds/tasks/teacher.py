"""The teacher of VQ-KD (BEiT v2 §2.1): a frozen backbone whose patch features the tokenizer learns
to reconstruct, from one of three sources (``teacher.source``):

* ``open_clip``: OpenAI CLIP (the paper's ViT-B/16) through ``open_clip``, built without download
  (``pretrained=None``) and given the visual tower of a local file — OpenAI's TorchScript
  ``ViT-B-16.pt`` or a state dict of the whole model (open_clip's / Hugging Face's ``.bin`` or
  ``.safetensors``); features ``ln_post(tokens)[:, 1:] @ proj`` (unilm's CLIP target, 512-d);
* ``timm``: ``timm.create_model(name)`` and a weights file, or a folder with ``timm.json`` (the
  ``timm/`` of our exports); features ``forward_features`` without the prefix tokens;
* ``beit``: whatever ``finetune.init`` reads — an export folder or DeepSpeed checkpoint of any kind
  (its own architecture), or a weights file of the preset ``teacher.name``; features the patch
  tokens after ``norm``, through ``fc_norm`` for a mean-pooling model (as unilm's teacher).

Each takes [0, 1] pixels and normalises them by its own mean / std (``teacher.mean`` / ``std``
override). Every failure to load is one ``ConfigError`` line naming ``teacher.*``. Weights files are
read as ``finetune.init`` reads them (``engine/weights.py``: the restricted unpickler), OpenAI's
TorchScript archive with ``torch.jit.load`` (TorchScript's own loader: its code is never called here).
"""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from beit_ds.artifacts import ExportDir
from beit_ds.assets import resolve
from beit_ds.config import ConfigError, ModelConfig, TeacherConfig
from beit_ds.config_io import build_dataclass
from beit_ds.engine.checkpoint import CheckpointError, is_checkpoint_path
from beit_ds.engine.checkpoint import resolve as resolve_checkpoint
from beit_ds.engine.saved import read_saved
from beit_ds.engine.weights import read_raw_weights
from beit_ds.models import Beit, model_config
from beit_ds.models.convert import key_report
from beit_ds.tasks.weights import is_export, model_to_inspect

Tensors = dict[str, torch.Tensor]
RGB = tuple[float, float, float]
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # = unilm's ScalingLayerForClip
HALF: tuple[RGB, RGB] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # BEiT's default input normalisation


class Teacher(nn.Module):
    """``forward(images [B, 3, S, S] in [0, 1]) -> features [B, N, C]`` of the frozen ``model``,
    under ``no_grad``; subclasses say which tokens (``tokens``)."""

    def __init__(self, model: nn.Module, mean: RGB, std: RGB) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    mean: torch.Tensor
    std: torch.Tensor

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The feature tokens ``[B, N, C]`` of normalised images ``x``: each kind of teacher says which."""
        raise NotImplementedError(f"{type(self).__name__}: a teacher defines tokens()")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.dtype)
        return self.tokens((x - self.mean) / self.std)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: dropout and drop path stay off


class BeitTeacher(Teacher):
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.model
        assert isinstance(backbone, Beit)
        patches = backbone.forward_features(x)[:, 1:]
        return backbone.fc_norm(patches) if backbone.fc_norm is not None else patches


class TimmTeacher(Teacher):
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        prefix = getattr(self.model, "num_prefix_tokens", 1)
        features = self.model.forward_features(x)  # type: ignore[operator]  # timm's API
        assert isinstance(features, torch.Tensor)
        return features[:, prefix:]


class ClipTeacher(Teacher):
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(  # type: ignore[operator]  # open_clip's API
            x, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC")
        proj = self.model.proj
        assert isinstance(proj, torch.Tensor)
        return out["image_intermediates"][-1] @ proj


def _optional(name: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"teacher.source: needs the {name} package ({err}); pip install {extra}") from None


def _as_teacher(err: ConfigError) -> ConfigError:
    """The one-line error of a weights reader that usually serves ``finetune.init``, about ``teacher.path``."""
    return ConfigError(f"teacher: {str(err).replace('finetune.init', 'teacher.path')}")


def read_state_dict(path: Path) -> Tensors:
    """The tensors of a weights file (``.safetensors``; unilm / timm / Hugging Face torch files through
    the restricted unpickler, unwrapped from their containers: ``engine/weights.py``)."""
    try:
        return read_raw_weights(str(path))[0]
    except ConfigError as err:
        raise _as_teacher(err) from None


def _load_strict(module: nn.Module, sd: Tensors, where: str) -> None:
    """``sd`` into ``module``, every key and shape matching (else one line naming the first difference)."""
    own = module.state_dict()
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if missing or unexpected:
        raise ConfigError(f"{where}: does not fit the teacher model: {key_report(missing, unexpected)}")
    for key, value in own.items():
        if sd[key].shape != value.shape:
            raise ConfigError(f"{where}: {key} has shape {list(sd[key].shape)}, the teacher model"
                              f" {list(value.shape)} (teacher.name must name the weights' architecture)")
    module.load_state_dict(sd, strict=True)


def _section(mapping: object, key: str) -> dict[str, object]:
    """``mapping[key]`` when both are JSON objects, else ``{}``."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, dict) else {}


def _rgb(values: object, default: RGB) -> RGB:
    if isinstance(values, (list, tuple)) and len(values) == 3:
        return (float(values[0]), float(values[1]), float(values[2]))
    return default


def open_clip_visual(name: str, path: Path | None) -> nn.Module:
    """open_clip's ``name`` (random weights, no download), its visual tower loaded from ``path``."""
    open_clip = _optional("open_clip", "open_clip_torch (the clip extra)")
    try:
        model = open_clip.create_model(name, pretrained=None)
    except RuntimeError as err:
        raise ConfigError(f"teacher.name={name!r}: not an open_clip model ({str(err).splitlines()[0][:200]})") from None
    visual = model.visual
    if path is not None:
        sd = _torchscript_state(path) if _is_torchscript(path) else read_state_dict(path)
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
        _load_strict(visual, sd, f"teacher.path={str(path)!r} (the visual.* weights of teacher.name={name!r})")
    assert isinstance(visual, nn.Module)
    return visual


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _torchscript_state(path: Path) -> Tensors:
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except RuntimeError as err:
        raise ConfigError(f"teacher.path={str(path)!r}: not a readable TorchScript archive ({err})") from None


def timm_teacher(cfg: TeacherConfig, path: Path) -> Teacher:
    """``timm.create_model`` of ``teacher.name`` (or a ``timm.json`` folder's) with its weights."""
    timm = _optional("timm", "timm")
    name, kwargs, weights = cfg.name, {}, path
    if path.is_dir() and (path / "timm.json").is_file():
        spec = json.loads((path / "timm.json").read_text())
        name, kwargs, weights = str(spec.get("model_name")), _section(spec, "kwargs"), path / "model.safetensors"
    try:
        model = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 0})
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"teacher.name={name!r}: timm cannot build it ({str(err).splitlines()[0][:200]})") from None
    sd = {k: v for k, v in read_state_dict(weights).items() if not k.startswith("head.")}
    _load_strict(model, sd, f"teacher.path={str(weights)!r}")
    cfg_norm = getattr(model, "pretrained_cfg", None) or {}
    return TimmTeacher(model, _rgb(cfg.mean or cfg_norm.get("mean"), HALF[0]),
                       _rgb(cfg.std or cfg_norm.get("std"), HALF[1]))


def beit_teacher(cfg: TeacherConfig, path: Path) -> Teacher:
    """Our backbone: an export folder, a DeepSpeed checkpoint (architecture stored in it) or a
    weights file of the preset ``teacher.name``."""
    recipe: dict[str, object] = {}
    try:
        if is_export(path):
            recipe = ExportDir(path).read_recipe()
            model_cfg = ModelConfig()
        elif path.is_dir() and is_checkpoint_path(path):
            recipe = read_saved(resolve_checkpoint(path)).recipe
            model_cfg = build_dataclass(ModelConfig, _section(recipe, "model"), "model")
        else:
            model_cfg = model_config(cfg.name)
        backbone = model_to_inspect(str(path), model_cfg)
    except CheckpointError as err:
        raise ConfigError(f"teacher.path={str(path)!r}: {err}") from None
    except ConfigError as err:
        raise _as_teacher(err) from None
    transform = _section(_section(recipe, "data"), "transform")
    return BeitTeacher(backbone, _rgb(cfg.mean or transform.get("mean"), HALF[0]),
                       _rgb(cfg.std or transform.get("std"), HALF[1]))


def load_teacher(cfg: TeacherConfig) -> Teacher:
    """The frozen teacher ``cfg`` names, on the CPU in fp32 (one-line ``ConfigError`` on failure)."""
    if not cfg.path:
        raise ConfigError("teacher.path='': expected the teacher's weights (a file, export folder or checkpoint)")
    path = resolve(cfg.path)  # "package:<name>" is a shipped asset
    if not path.exists():
        raise ConfigError(f"teacher.path={cfg.path!r}: no such file or directory")
    if cfg.source == "open_clip":
        visual = open_clip_visual(cfg.name, path)
        return ClipTeacher(visual, _rgb(cfg.mean, OPENAI_CLIP[0]), _rgb(cfg.std, OPENAI_CLIP[1]))
    if cfg.source == "timm":
        return timm_teacher(cfg, path)
    return beit_teacher(cfg, path)


def check_teacher(teacher: Teacher, image_size: int, grid: int, out_dim: int) -> None:
    """One-line ``ConfigError`` unless the teacher gives ``grid``² features of width ``out_dim``
    (``tokenizer.vqkd.decoder_out_dim``) for ``image_size``² views (one forward of a blank view)."""
    try:
        features = teacher(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"teacher: cannot take {image_size}x{image_size} views ({str(err).splitlines()[0][:200]})") from None
    n, width = features.shape[1], features.shape[2]
    if n != grid * grid:
        raise ConfigError(f"teacher: {n} patch features for {image_size}x{image_size} views, the VQ-KD code grid is"
                          f" {grid}x{grid} (tokenizer.image_size / tokenizer.vqkd.patch_size): use a teacher of that patch size")
    if width != out_dim:
        raise ConfigError(f"tokenizer.vqkd.decoder_out_dim={out_dim}: the teacher's features are {width}-d"
                          f" (set tokenizer.vqkd.decoder_out_dim={width})")
