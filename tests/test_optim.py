"""Parameter groups from model metadata: weight-decay exclusions and layer-wise lr decay."""

from __future__ import annotations

import pytest
import torch

from beit_ds.config import MIMConfig
from beit_ds.models import build_mim_model, build_model, model_config
from beit_ds.optim import apply_schedule, param_groups


def _group_of(groups, model):
    ids = {id(p): g for g in groups for p in g["params"]}
    return {n: ids[id(p)] for n, p in model.named_parameters()}


def _decayed(model) -> dict[str, bool]:
    return {n: g["weight_decay"] > 0 for n, g in _group_of(param_groups(model, 0.05), model).items()}


def _unilm_decayed(model, skip: set[str]) -> dict[str, bool]:
    """unilm's optim_factory.get_parameter_groups rule: no decay for 1-d params, ``*.bias`` and
    names in the skip list (``model.no_weight_decay()`` = {pos_embed, cls_token}, plus the
    per-layer tables with ``--disable_weight_decay_on_rel_pos_bias``)."""
    return {n: not (p.ndim == 1 or n.endswith(".bias") or n in skip) for n, p in model.named_parameters()}


UNILM_SKIP = {"pos_embed", "cls_token"}


def test_pretraining_weight_decay_matches_unilm_per_parameter():
    cfg = model_config("beit_debug_patch4_32", rel_pos_bias="shared", use_abs_pos_emb=True)
    model = build_mim_model(cfg, MIMConfig(vocab_size=16))
    decayed = _decayed(model)
    assert decayed == _unilm_decayed(model, UNILM_SKIP)
    # unilm run_beit_pretraining.py: mask_token and the shared table are decayed
    assert decayed["mask_token"] and decayed["rel_pos_bias.relative_position_bias_table"]
    for name in [
        "cls_token",
        "pos_embed",
        "blocks.0.attn.q_bias",
        "blocks.0.norm1.weight",
        "blocks.1.gamma_1",
        "lm_head.bias",
    ]:
        assert not decayed[name], name
    assert (
        sum(decayed.values()) == 4 * cfg.depth + 4
    )  # per block qkv, proj, fc1, fc2; conv, lm_head, table, mask_token
    old = build_mim_model(cfg.replace(wd_exempt="positional"), MIMConfig(vocab_size=16))
    assert not _decayed(old)["mask_token"] and not _decayed(old)["rel_pos_bias.relative_position_bias_table"]


@pytest.mark.parametrize("wd_exempt", ["unilm", "unilm_rel_pos"])
def test_finetuning_weight_decay_matches_unilm_per_parameter(wd_exempt):
    cfg = model_config("beit_debug_patch4_32", rel_pos_bias="per_layer", global_pool="avg", num_classes=3)
    model = build_model(cfg.replace(wd_exempt=wd_exempt))
    skip = set(UNILM_SKIP)
    if wd_exempt == "unilm_rel_pos":  # unilm run_class_finetuning.py --disable_weight_decay_on_rel_pos_bias
        skip |= {f"blocks.{i}.attn.relative_position_bias_table" for i in range(cfg.depth)}
    decayed = _decayed(model)
    assert decayed == _unilm_decayed(model, skip)
    assert decayed["blocks.0.attn.relative_position_bias_table"] == (wd_exempt == "unilm")
    assert decayed["head.weight"] and not decayed["fc_norm.weight"] and not decayed["cls_token"]


def test_layer_decay_scales():
    model = build_model(model_config("beit_debug_patch4_32", depth=2, global_pool="avg", num_classes=3))
    of = _group_of(param_groups(model, 0.05, layer_decay=0.5), model)
    # num_layers = depth + 2 = 4: embeddings 0.5^3, block i 0.5^(2-i), head 1
    assert of["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.125)
    assert of["blocks.0.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.25)
    assert of["blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert of["head.weight"]["lr_scale"] == 1.0 and of["fc_norm.weight"]["lr_scale"] == 1.0
    opt = torch.optim.AdamW(param_groups(model, 0.05, layer_decay=0.5))
    apply_schedule(opt, lr=1e-3, weight_decay=0.1)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.1}
