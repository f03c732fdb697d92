"""Loading pre-trained backbone weights into any model that contains a ``Beit`` (house style
rule 23): a classifier, a segmentation backbone, a DINO student.

``load_backbone(backbone, sd)`` takes a state dict in our layout (see ``convert.py`` for timm /
Hugging Face / unilm files): it drops the MIM-only keys, adapts positions to the backbone's grid
(``convert.adapt_positions``: resized tables, a shared relative-bias table copied per layer),
applies a head policy, allows the differences a backbone's structure implies (``norm`` replaced
by ``fc_norm``, blocks and norms removed by ``Beit.prune_intermediate_layers``) and names any
other difference in one line.
"""

from __future__ import annotations

import torch

from beit_ds.models.beit import Beit
from beit_ds.models.convert import adapt_positions, backbone_state_dict, key_report

Tensors = dict[str, torch.Tensor]
HEAD_KEYS = ("head.weight", "head.bias")
HEAD_POLICIES = ("auto", "reset", "keep")


def load_backbone(backbone: Beit, sd: Tensors, head: str = "auto", source: str = "weights") -> list[str]:
    """Load ``sd`` (our layout) into ``backbone``; returns its keys left at their initial value.

    ``head``: ``"auto"`` keeps the checkpoint's classifier only when the backbone has one of the
    same shape, ``"reset"`` never keeps it, ``"keep"`` requires it. Any other missing or
    unexpected key, or a shape that differs, raises a one-line ``ValueError`` naming ``source``.
    A model wrapping the backbone calls this with the submodule (``load_backbone(m.backbone, sd)``).
    """
    if head not in HEAD_POLICIES:
        raise ValueError(f"head={head!r}: expected one of {', '.join(HEAD_POLICIES)}")
    sd = adapt_positions(backbone_state_dict(sd), backbone.cfg)
    own = backbone.state_dict()
    head_fits = all(k in sd and k in own and sd[k].shape == own[k].shape for k in HEAD_KEYS)
    if head == "keep" and not head_fits:
        has = f"a {sd['head.weight'].shape[0]}-class head" if "head.weight" in sd else "no classifier head"
        raise ValueError(
            f"{source}: has {has}, model.num_classes={backbone.cfg.num_classes} (set finetune.head=reset"
            " or auto to train a new head)"
        )
    if head == "reset" or not head_fits:
        sd = {k: v for k, v in sd.items() if k not in HEAD_KEYS}
    allowed_missing, allowed_unexpected = expected_differences(backbone, sd)
    missing = [k for k in own if k not in sd and k not in allowed_missing]
    unexpected = [k for k in sd if k not in own and k not in allowed_unexpected]
    if missing or unexpected:
        raise ValueError(f"{source}: does not fit this model: {key_report(missing, unexpected)}")
    for key in own:  # in model order: the first mismatch is named
        if key in sd and sd[key].shape != own[key].shape:
            raise ValueError(
                f"{source}: {key} has shape {list(sd[key].shape)}, the model {list(own[key].shape)}"
                " (model.embed_dim / depth / num_heads / mlp_ratio must match the weights)"
            )
    backbone.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return sorted(k for k in own if k not in sd)


def expected_differences(backbone: Beit, sd: Tensors) -> tuple[set[str], set[str]]:
    """Keys that may be missing from ``sd`` / left over in it without being an error: a new
    head; ``fc_norm`` replacing a pre-trained ``norm``; the blocks and final norms a pruned
    backbone (``prune_intermediate_layers``) no longer has."""
    missing = set(HEAD_KEYS)
    unexpected: set[str] = set()
    own = backbone.state_dict()
    if backbone.fc_norm is not None and "fc_norm.weight" not in sd:  # pre-trained: norm -> fc_norm
        missing |= {"fc_norm.weight", "fc_norm.bias"}
        unexpected |= {"norm.weight", "norm.bias"}
    norms_pruned = "norm.weight" not in own and "fc_norm.weight" not in own
    kept = len(backbone.blocks)
    if norms_pruned:
        unexpected |= {k for k in sd if k.startswith(("norm.", "fc_norm."))}
    if norms_pruned or kept < backbone.cfg.depth:  # a deeper checkpoint into a full model still fails
        unexpected |= {k for k in sd if k.startswith("blocks.") and int(k.split(".")[1]) >= kept}
    return missing, unexpected
