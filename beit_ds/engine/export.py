"""Export a (ZeRO-sharded) checkpoint as consolidated fp32 weights ready for fine-tuning:
``model.safetensors`` in our (= unilm) layout, plus the backbone in timm's and Hugging Face's
layouts (``timm/``, ``hf/``) via ``models/convert.py``. Every file is written beside its name and
renamed into place, and the sub-folders must not be links (safe_write.py): a link planted in an
export folder is never written through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from beit_ds.config_io import build_dataclass
from beit_ds.distributed import ProcessPlace
from beit_ds.engine import elastic, safe_load
from beit_ds.engine.checkpoint import GROUP_NAMES, CheckpointError, verify
from beit_ds.engine.task import Task, task_type
from beit_ds.models import Beit, BeitForMaskedImageModeling, build_mim_model, build_model
from beit_ds.models.convert import backbone_state_dict, to_hf, to_timm
from beit_ds.recipe import PretrainRecipe
from beit_ds.safe_write import make_dir, replacing, write_text


def checkpoint_client_state(tag_dir: Path) -> dict[str, Any]:
    """The client state (recipe, TrainState) rank 0 stored with DeepSpeed's model states, read with
    the restricted unpickler."""
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"checkpoint {tag_dir}: no mp_rank_*_model_states.pt (not a DeepSpeed checkpoint)")
    try:
        return safe_load.load(files[0], "checkpoint file")
    except safe_load.UnsafeFileError as err:
        raise CheckpointError(str(err)) from None


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights gathered from every rank's ZeRO shards, or of a stage-0 checkpoint (every file
    read without running code)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        safe_load.check_files(tag_dir, "checkpoint")
        if not elastic.has_zero_shards(p.name for p in tag_dir.iterdir()):
            return stage0_state_dict(tag_dir)
        with safe_load.weights_only_loading():
            sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except safe_load.UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    return {k: v.contiguous() for k, v in sd.items()}


def stage0_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO stage-0 checkpoint (no optimizer shards; DeepSpeed's
    ``zero_to_fp32`` reads only ZeRO ones): the module's own weights in an fp32 run; in bf16 /
    fp16, the optimizer's fp32 master copies (``fp32_groups``), named by the group order the
    save recorded (``checkpoint.fp32_group_names``), and the module's buffers."""
    states = checkpoint_client_state(tag_dir)
    sd = {k: v.float().contiguous() for k, v in states["module"].items()}
    masters = (states.get("optimizer") or {}).get("fp32_groups")
    if masters is None:
        return sd
    names = states.get(GROUP_NAMES)
    if names is None:
        raise CheckpointError(f"checkpoint {tag_dir}: a stage-0 bf16/fp16 checkpoint without {GROUP_NAMES}"
                              " (saved before beit_ds recorded them): its fp32 master weights cannot be named")
    for group_names, tensors in zip(names, masters, strict=True):
        for name, tensor in zip(group_names, tensors, strict=True):
            if tuple(tensor.shape) != tuple(sd[name].shape):
                raise CheckpointError(f"checkpoint {tag_dir}: fp32 master of {name} has shape {tuple(tensor.shape)},"
                                      f" the module's {tuple(sd[name].shape)}")
            sd[name] = tensor.float().contiguous()
    return sd


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_tensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """``sd`` as a safetensors file at ``path`` (tensors made contiguous), written beside it and
    renamed into place: a link at ``path`` is replaced, never written through."""
    with replacing(path) as tmp:
        save_file(_contiguous(sd), tmp, metadata=metadata)
    return path


def save_weights(sd: dict[str, torch.Tensor], path: Path, **metadata: str) -> Path:
    """``sd`` as a safetensors file at ``path`` (``save_tensors``), tagged ``format=beit_ds``."""
    return save_tensors(sd, path, {"format": "beit_ds", **metadata})


def export_checkpoint(tag_dir: Path, out_dir: Path, client: dict[str, Any] | None = None) -> list[Path]:
    """Write ``model.safetensors`` (+ ``recipe.json``), ``timm/`` and ``hf/`` from the pre-training
    checkpoint ``tag_dir`` (``client``: its client state, read when not given)."""
    tag_dir, out_dir = Path(tag_dir), Path(out_dir)
    verify(tag_dir, checksums=False)
    client = client if client is not None else checkpoint_client_state(tag_dir)
    recipe = build_dataclass(PretrainRecipe, client["recipe"])
    model: BeitForMaskedImageModeling = build_mim_model(recipe.model, recipe.mim)
    model.load_state_dict(consolidated_state_dict(tag_dir), strict=True)
    make_dir(out_dir, link_ok=True)
    ours = save_weights(model.state_dict(), out_dir / "model.safetensors", source=str(tag_dir))
    write_text(out_dir / "recipe.json", json.dumps(client["recipe"], indent=1))
    backbone = build_model(recipe.model)
    backbone.load_state_dict(backbone_state_dict(model.state_dict()), strict=True)
    return [ours, *write_timm_and_hf(backbone, out_dir)]


def write_timm_and_hf(model: Beit, out_dir: Path) -> list[Path]:
    """``timm/`` (weights + ``timm.json``) and ``hf/`` (``save_pretrained`` layout) exports of
    ``model``; with a classifier, Hugging Face's is a ``BeitForImageClassification``."""
    timm = to_timm(model)
    make_dir(out_dir / "timm")  # inside the export: a link there is refused
    save_tensors(timm.state_dict, out_dir / "timm" / "model.safetensors")
    write_text(out_dir / "timm" / "timm.json",
               json.dumps({"model_name": timm.model_name, "kwargs": timm.kwargs}, indent=1, default=repr))
    hf = to_hf(model, layout="hub")
    make_dir(out_dir / "hf")
    classifier = model.head is not None
    weights = hf.for_image_classification() if classifier else hf.state_dict
    save_tensors(weights, out_dir / "hf" / "model.safetensors", {"format": "pt"})
    architecture = "BeitForImageClassification" if classifier else "BeitModel"
    config = {"model_type": "beit", "architectures": [architecture], **hf.config}
    write_text(out_dir / "hf" / "config.json", json.dumps(config, indent=1))
    return [out_dir / "timm", out_dir / "hf"]


def checkpoint_task(task_cls: type[Task[Any]], tag_dir: Path, client: dict[str, Any]) -> tuple[Task[Any], nn.Module]:
    """A ``task_cls`` of the recipe stored in ``client`` (checked, on one process) and its model with
    the consolidated weights of ``tag_dir``: what a task's export or evaluation of a checkpoint starts from."""
    task = task_cls(build_dataclass(task_cls.recipe_type, client["recipe"]), ProcessPlace())
    task.check()
    model = task.build_model()
    model.load_state_dict(consolidated_state_dict(tag_dir), strict=True)
    return task, model


def export_any(tag_dir: Path, out_dir: Path) -> list[Path]:
    """Export ``tag_dir`` by the ``kind`` its client state stores (pre-training, fine-tuning,
    linear probe, tokenizer), through that task's ``export``. ``out_dir`` (made if missing) must
    be a folder: anything else is a one-line ``ConfigError`` before any work."""
    make_dir(out_dir, link_ok=True)
    client = checkpoint_client_state(tag_dir)
    kind = client.get("kind", "pretrain")  # checkpoints before kinds were stored are pre-training ones
    return task_type(str(kind), f"checkpoint {tag_dir}").export(tag_dir, out_dir, client)
