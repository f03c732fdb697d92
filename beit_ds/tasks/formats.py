"""A backbone or classifier written in the layouts other libraries load: ``timm/`` (weights +
``timm.json``: the model name and arguments for ``timm.create_model``) and ``hf/`` (Hugging
Face's ``save_pretrained`` layout), via ``models/convert.py``, into an ``ExportDir``: sub-folders
that are links are refused and files are replaced, never written through a planted link.
"""

from __future__ import annotations

from pathlib import Path

from beit_ds.artifacts import ExportDir
from beit_ds.models import Beit
from beit_ds.models.convert import to_hf, to_timm


def write_timm_and_hf(model: Beit, export: ExportDir, v2: bool = False) -> list[Path]:
    """``timm/`` and ``hf/`` exports of ``model``; with a classifier, Hugging Face's is a
    ``BeitForImageClassification``, else a ``BeitModel``. ``v2``: ``timm.json`` names timm's
    ``beitv2_*`` model (same layout; its config's normalisation is ImageNet's mean and std)."""
    timm = to_timm(model, v2)
    timm_dir = export.sub("timm")
    timm_dir.write_tensors("model.safetensors", timm.state_dict)
    timm_dir.write_json("timm.json", {"model_name": timm.model_name, "kwargs": timm.kwargs})
    hf = to_hf(model, layout="hub")
    hf_dir = export.sub("hf")
    classifier = model.head is not None
    weights = hf.for_image_classification() if classifier else hf.state_dict
    hf_dir.write_tensors("model.safetensors", weights, {"format": "pt"})
    architecture = "BeitForImageClassification" if classifier else "BeitModel"
    hf_dir.write_json("config.json", {"model_type": "beit", "architectures": [architecture], **hf.config})
    return [timm_dir.path, hf_dir.path]
