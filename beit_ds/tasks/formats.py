"""A backbone or classifier written in the layouts other libraries load: ``timm/`` (weights +
``timm.json``: the model name and arguments for ``timm.create_model``) and ``hf/`` (Hugging
Face's ``save_pretrained`` layout), via ``models/convert.py``. Sub-folders that are links are
refused (``safe_write.make_dir``), so an export never writes through a planted link.
"""

from __future__ import annotations

import json
from pathlib import Path

from beit_ds.artifacts import save_tensors
from beit_ds.models import Beit
from beit_ds.models.convert import to_hf, to_timm
from beit_ds.safe_write import make_dir, write_text


def write_timm_and_hf(model: Beit, out_dir: Path) -> list[Path]:
    """``timm/`` and ``hf/`` exports of ``model``; with a classifier, Hugging Face's is a
    ``BeitForImageClassification``, else a ``BeitModel``."""
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
