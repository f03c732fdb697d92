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


def test_no_weight_decay_on_biases_norms_tokens_and_tables():
    model = build_mim_model(model_config("beit_debug_patch4_32", rel_pos_bias="shared", use_abs_pos_emb=True), MIMConfig(vocab_size=16))
    groups = param_groups(model, weight_decay=0.05)
    of = _group_of(groups, model)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name in ["cls_token", "mask_token", "pos_embed", "rel_pos_bias.relative_position_bias_table",
                 "blocks.0.attn.q_bias", "blocks.0.norm1.weight", "blocks.1.gamma_1", "lm_head.bias"]:
        assert of[name]["weight_decay"] == 0.0, name
    for name in ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "lm_head.weight"]:
        assert of[name]["weight_decay"] == 0.05, name


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
