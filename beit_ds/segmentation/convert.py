"""Segmentation checkpoint formats (house style rule 6): unilm / mmseg runner files and Hugging Face
``BeitForSemanticSegmentation``, to and from our ``BeitForSegmentation`` keys.

* **ours** = ``backbone.*`` (our BEiT keys), ``neck.fpn{1..4}.*``, ``decode_head.*`` and
  ``auxiliary_head.*`` with mmseg's names.
* **unilm / mmseg** (``torch.load(f)["state_dict"]`` of unilm's ``beit/semantic_segmentation``):
  the same, except that the pyramid lives in the backbone (``backbone.fpn1.0``, …) and the
  derivable ``relative_position_index`` buffers are stored. ``from_mmseg_state_dict`` moves the
  one and drops the other; the result loads with ``strict=True``.
* **Hugging Face**, hub names (``save_pretrained`` files; what ``from_pretrained`` reads in every
  ``transformers`` version): ``beit.*`` backbone (``models/convert.py``), ``fpn1.0`` / ``fpn2.0``
  at the top, mmseg's decoder names except ``classifier`` for ``conv_seg``. The module names of
  ``transformers`` 5.x (``fpn.fpn1.conv_transpose1``, ``….convolution`` / ``….normalization``,
  ``psp_modules.blocks.{i}.conv``, ``psp_bottleneck``) are read as well. HF's UperNet is the
  FCN-auxiliary UperNet with ``channels`` = the backbone width. Its ``out_indices`` are not
  unilm's: index ``i`` takes ``hidden_states[i - 1]``, the output after ``i - 1`` blocks, so our
  0-based block ``b`` is its ``b + 2`` and at most ``num_hidden_layers``; HF's default
  ``[3, 5, 7, 11]`` are our blocks 1, 3, 5, 9, and unilm's block 11 of 12 cannot be named at
  all. The export therefore appends one identity block (LayerScale and output projections
  zero: ``x + 0 + 0``) after the last used one, so that every ``out_indices`` exports exactly.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch

from beit_ds.models.beit import Beit
from beit_ds.models.convert import DERIVED_SUFFIXES, from_hf_state_dict, hf_config, to_hf
from beit_ds.segmentation.model import BeitForSegmentation

Tensors = dict[str, torch.Tensor]
HEAD_PREFIXES = ("neck.", "decode_head.", "auxiliary_head.")

# (our name, hub name) rewrites of the head keys, applied as regular expressions in order.
_HUB = (
    (r"^neck\.(fpn\d)\.", r"\1."),
    (r"^(decode_head|auxiliary_head)\.conv_seg\.", r"\1.classifier."),
)
# transformers 5.x module names -> hub names (the inverse of its checkpoint conversion mapping)
_MODULE_TO_HUB = (
    (r"^fpn\.fpn1\.conv_transpose1\.", "fpn1.0."),
    (r"^fpn\.fpn1\.normalization\.", "fpn1.1."),
    (r"^fpn\.fpn1\.conv_transpose2\.", "fpn1.3."),
    (r"^fpn\.fpn2\.", "fpn2.0."),
    (r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv\.convolution\.", r"decode_head.psp_modules.\1.1.conv."),
    (r"^decode_head\.psp_modules\.blocks\.(\d+)\.conv\.normalization\.", r"decode_head.psp_modules.\1.1.bn."),
    (r"^decode_head\.psp_bottleneck\.", "decode_head.bottleneck."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
)


def _rewrite(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def from_mmseg_state_dict(sd: dict[str, Any]) -> Tensors:
    """A unilm / mmseg segmentation checkpoint (the file's dict, its ``state_dict`` or ``model``)
    in our layout: ``backbone.fpnK.*`` → ``neck.fpnK.*``; derivable buffers dropped."""
    for wrapper in ("state_dict", "model"):
        if isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    out: Tensors = {}
    for key, value in sd.items():
        if key.endswith(DERIVED_SUFFIXES):
            continue
        out[re.sub(r"^backbone\.(fpn\d)\.", r"neck.\1.", key)] = value
    return out


def to_mmseg_state_dict(sd: Tensors) -> Tensors:
    """Our state dict in unilm's layout (the pyramid under ``backbone.``)."""
    return {re.sub(r"^neck\.(fpn\d)\.", r"backbone.\1.", k): v for k, v in sd.items()}


def hf_segmentation_config(model: BeitForSegmentation) -> dict[str, Any]:
    """``BeitConfig`` keyword arguments of ``BeitForSegmentation`` ``model`` (UperNet only)."""
    d, cfg = model.decode_cfg, model.backbone.cfg
    if d.head != "upernet" or d.channels != cfg.embed_dim:
        raise ValueError(
            f"decode.head={d.head!r}, decode.channels={d.channels}: Hugging Face's BeitForSemanticSegmentation"
            f" is UperNet with channels = model.embed_dim={cfg.embed_dim}"
        )
    config = hf_config(replace(cfg, depth=len(model.backbone.blocks) + 1))
    config.update(
        use_mean_pooling=True,  # no final norm on the features (HF's ``layernorm`` is then Identity)
        num_labels=d.num_classes,
        out_indices=[i + 2 for i in d.out_indices],
        pool_scales=list(d.pool_scales),
        use_auxiliary_head=d.auxiliary,
        auxiliary_loss_weight=d.aux_weight,
        auxiliary_channels=d.aux_channels,
        auxiliary_num_convs=d.aux_num_convs,
        auxiliary_concat_input=False,
        semantic_loss_ignore_index=255,
    )
    return config


def to_hf_segmentation(model: BeitForSegmentation) -> tuple[dict[str, Any], Tensors]:
    """``(config kwargs, hub-named state dict)`` of ``model`` for ``BeitForSemanticSegmentation``."""
    config = hf_segmentation_config(model)
    sd = model.state_dict()
    backbone = to_hf(padded_backbone(model.backbone), layout="hub").state_dict
    out = {"beit." + k: v for k, v in backbone.items() if not k.startswith(("layernorm.", "pooler."))}
    out |= {_rewrite(k, _HUB): v for k, v in sd.items() if k.startswith(HEAD_PREFIXES)}
    return config, out


def padded_backbone(backbone: Beit) -> Beit:
    """A copy of the (pruned) ``backbone`` with one more block that returns its input exactly."""
    kept = len(backbone.blocks)
    padded = Beit(replace(backbone.cfg, depth=kept + 1, drop_path_rate=0.0))
    padded.load_state_dict(backbone.state_dict(), strict=False)
    last = padded.block_list()[kept]
    with torch.no_grad():
        for name, p in last.named_parameters():
            if name.startswith(("gamma_", "attn.proj.", "mlp.fc2.")):
                p.zero_()
    return padded


def from_hf_out_indices(indices: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Our 0-based blocks for Hugging Face ``out_indices`` (see the module docstring)."""
    if min(indices) < 2:
        raise ValueError(f"Hugging Face out_indices={list(indices)}: index 1 is the patch embedding, which"
                         " BeitForSegmentation does not take (expected indices >= 2)")
    return tuple(i - 2 for i in indices)


def from_hf_segmentation(sd: Tensors, blocks: int | None = None) -> Tensors:
    """A ``BeitForSemanticSegmentation`` state dict (hub or 5.x module names) in our layout;
    with ``blocks``, the blocks from that index on (which no feature uses) are left out."""
    backbone = from_hf_state_dict({k: v for k, v in sd.items() if k.startswith("beit.")})
    if blocks is not None:
        backbone = {k: v for k, v in backbone.items()
                    if not (k.startswith("blocks.") and int(k.split(".")[1]) >= blocks)}
    out = {"backbone." + k: v for k, v in backbone.items()}
    for key, value in sd.items():
        if key.startswith("beit."):
            continue
        hub = _rewrite(key, _MODULE_TO_HUB)
        hub = re.sub(r"^(fpn\d)\.", r"neck.\1.", hub)
        out[re.sub(r"\.classifier\.", ".conv_seg.", hub)] = value
    return out
