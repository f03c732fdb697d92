"""Starting weights of a ``BeitForSegmentation`` from whatever a user has.

``load_segmentation_weights(model, sd, source)`` takes a state dict as its file holds it:

* a whole segmentation model — ours (``backbone.*`` + ``neck.*`` + ``decode_head.*``: a
  segmentation checkpoint or export), unilm's / mmseg's (``backbone.fpn1`` …), or Hugging Face's
  ``BeitForSemanticSegmentation`` (``beit.*``): every decoder key must match (one-line error
  otherwise), the backbone goes through ``models.load_backbone`` (positions and bias tables
  resized to the crop);
* anything else is a backbone in our layout (``engine/weights.to_our_layout`` converts timm,
  unilm and Hugging Face ``BeitModel`` files first): the backbone is loaded, the task layer keeps
  its fresh initialisation.
"""

from __future__ import annotations

import torch

from beit_ds.models.convert import key_report
from beit_ds.models.loading import load_backbone
from beit_ds.segmentation.convert import HEAD_PREFIXES, from_hf_segmentation, from_mmseg_state_dict
from beit_ds.segmentation.model import BeitForSegmentation

Tensors = dict[str, torch.Tensor]


def is_segmentation_state_dict(sd: Tensors) -> bool:
    return any(k.startswith("decode_head.") for k in sd)


def _our_layout(sd: Tensors, blocks: int) -> Tensors:
    """A whole segmentation state dict (ours, unilm / mmseg or Hugging Face) in our layout."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("beit.") for k in sd):
        return from_hf_segmentation(sd, blocks=blocks)
    return from_mmseg_state_dict(sd)


def _load_decoder(model: BeitForSegmentation, heads: Tensors, source: str) -> None:
    own = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    missing, unexpected = sorted(set(own) - set(heads)), sorted(set(heads) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: its task layer does not fit decode.*: {key_report(missing, unexpected)}")
    for key, value in own.items():
        if heads[key].shape != value.shape:
            raise ValueError(f"{source}: {key} has shape {list(heads[key].shape)}, the model {list(value.shape)}"
                             " (decode.num_classes / channels / head must match the weights)")
    model.load_state_dict(heads, strict=False)


def load_segmentation_weights(model: BeitForSegmentation, sd: Tensors, source: str) -> list[str]:
    """Load ``sd`` into ``model``; returns the keys left at their initial values (one-line
    ``ValueError`` naming ``source`` for weights that do not fit)."""
    if not is_segmentation_state_dict(sd):
        fresh = load_backbone(model.backbone, sd, head="reset", source=source)
        return ["backbone." + k for k in fresh] + [k for k in model.state_dict() if k.startswith(HEAD_PREFIXES)]
    ours = _our_layout(sd, len(model.backbone.blocks))
    backbone = {k.removeprefix("backbone."): v for k, v in ours.items() if k.startswith("backbone.")}
    fresh = load_backbone(model.backbone, backbone, head="reset", source=source)
    _load_decoder(model, {k: v for k, v in ours.items() if k.startswith(HEAD_PREFIXES)}, source)
    return ["backbone." + k for k in fresh]
