"""Backbone: sizes, initialisation, SDPA vs eager attention, activation checkpointing, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from beit_ds.config import ConfigError, MIMConfig
from beit_ds.models import (
    build_classifier,
    build_mim_model,
    build_model,
    create_model,
    list_models,
    model_config,
)
from beit_ds.models.attention import relative_position_index

DEBUG = "beit_debug_patch4_32"


def _perturb(model: torch.nn.Module) -> None:
    """Non-zero values everywhere (zero-init bias tables would hide bias bugs)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize(
    "name, millions",
    [("beit_base_patch16_224", 85.76), ("beit_large_patch16_224", 303.41)],
)
def test_published_parameter_counts(name, millions):
    # The seed's BEiT-B ≈ 86M and BEiT-L ≈ 304M (timm with its 1000-class head: 86.53M / 304.43M).
    with torch.device("meta"):
        model = create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, abs=0.01)


def test_presets_cover_the_named_sizes():
    names = list_models()
    for size, dim, depth, heads in [
        ("tiny", 192, 12, 3),
        ("small", 384, 12, 6),
        ("base", 768, 12, 12),
        ("large", 1024, 24, 16),
    ]:
        cfg = model_config(f"beit_{size}_patch16_224")
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (dim, depth, heads)
        assert f"beit_{size}_patch16_384" in names
    assert model_config("beit_large_patch16_224").mlp_ratio * 1024 == 4096


def test_unknown_name_or_key_is_one_line():
    with pytest.raises(ConfigError, match="model name 'beit_huge'"):
        create_model("beit_huge")
    with pytest.raises(ConfigError, match="model.depht="):
        create_model(DEBUG, depht=3)
    with pytest.raises(ConfigError, match="model.img_size=30: expected a multiple of model.patch_size=4"):
        create_model(DEBUG, img_size=30)


@pytest.mark.parametrize(
    "kind, trunc, qkv_std, bound",
    [
        # unilm modeling_pretrain.py: trunc_normal_(std=0.02, a=-std, b=std): std 0.54·0.02 = 0.0108
        ("mim", "auto", 0.0108, 0.02),
        # unilm modeling_finetune.py / timm Beit: trunc_normal_(std=0.02) cut at ±2 absolute: 0.0200
        ("classifier", "auto", 0.0200, None),
        # the old beit_ds init, still selectable: cut at ±2σ, std 0.88·0.02 = 0.0176
        ("classifier", "2std", 0.0176, 0.04),
        ("mim", "2std", 0.0176, 0.04),
    ],
)
def test_initialisation_matches_unilm_per_model(kind, trunc, qkv_std, bound):
    torch.manual_seed(0)
    cfg = model_config("beit_base_patch16_224", drop_path_rate=0.0, depth=2, init_trunc=trunc)
    if kind == "mim":
        model = build_mim_model(cfg, MIMConfig())
    else:
        model = build_classifier(cfg.replace(global_pool="avg", num_classes=10))
    qkv = model.blocks[0].attn.qkv.weight  # 1.77M values: std known to ≈ 0.1 %
    assert qkv.std().item() == pytest.approx(qkv_std, rel=0.01)  # measured 0.01079 / 0.02000 / 0.01760
    if bound is not None:
        assert qkv.abs().max().item() <= bound + 1e-7
        assert model.cls_token.abs().max().item() <= bound + 1e-7
    for layer_id, block in enumerate(model.blocks, start=1):  # seed §5: output projections / sqrt(2l)
        expected = qkv_std / math.sqrt(2 * layer_id)
        assert block.attn.proj.weight.std().item() == pytest.approx(expected, rel=0.02)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(expected, rel=0.02)
        assert torch.all(block.attn.relative_position_bias_table == 0)  # unilm: zeros
    conv = model.patch_embed.proj.weight
    if kind == "mim":  # pre-training re-initialises the patch convolution too
        assert conv.std().item() == pytest.approx(qkv_std, rel=0.02)
        assert model.mask_token.abs().max().item() <= bound + 1e-7
    else:  # fine-tuning leaves it at PyTorch's default: U(±1/sqrt(fan_in)), std 1/sqrt(3·768)
        assert conv.std().item() == pytest.approx(1 / math.sqrt(3 * 768), rel=0.02)


def test_backbone_layer_scale_and_tables():
    torch.manual_seed(0)
    model = create_model("beit_tiny_patch16_224", drop_path_rate=0.0)
    for block in model.blocks:
        assert torch.all(block.gamma_1 == 0.1) and torch.all(block.gamma_2 == 0.1)
        assert block.attn.relative_position_bias_table.shape == ((2 * 14 - 1) ** 2 + 3, 3)


def test_bad_init_trunc_is_one_line():
    with pytest.raises(ConfigError, match="model.init_trunc='3std'"):
        create_model(DEBUG, init_trunc="3std")


def test_relative_position_index_layout():
    idx = relative_position_index((2, 3))
    rows = (2 * 2 - 1) * (2 * 3 - 1)
    assert idx.shape == (7, 7)
    assert idx[0, 1:].eq(rows).all() and idx[1:, 0].eq(rows + 1).all() and idx[0, 0] == rows + 2
    # the same relative offset maps to the same row; the zero offset is the table's centre
    assert idx[1:, 1:].diagonal().eq((2 - 1) * (2 * 3 - 1) + (3 - 1)).all()
    assert idx[1, 2] == idx[4, 5]  # (0,0)->(0,1) and (1,0)->(1,1)


@pytest.mark.parametrize("rel_pos_bias", ["shared", "per_layer", "none"])
@pytest.mark.parametrize("abs_pos", [False, True])
def test_sdpa_equals_eager_reference(rel_pos_bias, abs_pos):
    cfg = model_config(DEBUG, rel_pos_bias=rel_pos_bias, use_abs_pos_emb=abs_pos)
    sdpa = build_model(cfg)
    _perturb(sdpa)
    eager = build_model(cfg.replace(attn_impl="eager"))
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(sdpa.forward_features(x), eager.forward_features(x), atol=1e-5, rtol=0)


def _grads(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)  # same drop-path draws in both runs
    model.zero_grad()
    model.forward_features(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rel_pos_bias", ["shared", "per_layer"])
def test_activation_checkpointing_gives_identical_gradients(rel_pos_bias):
    cfg = model_config(DEBUG, rel_pos_bias=rel_pos_bias, drop_path_rate=0.2, depth=3)
    model = build_model(cfg).train()
    _perturb(model)
    x = torch.randn(4, 3, 32, 32)
    plain = _grads(model, x)
    model.set_grad_checkpointing(True)
    ckpt = _grads(model, x)
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        assert torch.equal(plain[name], ckpt[name]), name


def test_checkpointing_computes_the_shared_bias_once_per_forward():
    model = build_model(model_config(DEBUG, rel_pos_bias="shared", depth=3))
    model.set_grad_checkpointing(True)
    calls = []
    model.rel_pos_bias.register_forward_hook(lambda *a: calls.append(1))
    model.forward_features(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 1  # not once per block, and not again in the recomputation


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rel_pos_bias", ["shared", "per_layer"])
def test_converted_half_precision_module_runs(dtype, rel_pos_bias):
    cfg = model_config(
        DEBUG, rel_pos_bias=rel_pos_bias, use_abs_pos_emb=True, global_pool="avg", num_classes=3
    )
    model = build_model(cfg)
    _perturb(model)
    ref = model(torch.ones(2, 3, 32, 32))
    half = model.to(dtype)  # as DeepSpeed does with .half() / .bfloat16()
    out = half(torch.ones(2, 3, 32, 32, dtype=dtype))
    out.float().sum().backward()
    assert out.dtype == dtype and out.shape == (2, 3)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_with_fp32_weights(dtype):
    model = build_model(model_config(DEBUG, rel_pos_bias="shared", global_pool="avg", num_classes=3))
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    out.float().sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out.float()).all()


def test_pooling_variants():
    x = torch.randn(2, 3, 32, 32)
    avg = build_model(model_config(DEBUG, global_pool="avg"))
    assert isinstance(avg.norm, torch.nn.Identity) and avg(x).shape == (2, 32)
    tok = build_model(model_config(DEBUG, global_pool="token", num_classes=7))
    assert tok.fc_norm is None and tok(x).shape == (2, 7)
    assert tok(torch.randn(1, 3, 64, 48)).shape == (1, 7)  # any multiple of the patch size runs
    with pytest.raises(ValueError, match="input image is 30x32: expected sides that are multiples of"):
        tok(torch.randn(1, 3, 30, 32))


def test_weight_decay_and_layer_metadata():
    model = build_model(model_config(DEBUG, rel_pos_bias="per_layer", use_abs_pos_emb=True, depth=2))
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}  # unilm's list
    opted_out = build_model(model.cfg.replace(wd_exempt="unilm_rel_pos"))
    assert "blocks.1.attn.relative_position_bias_table" in opted_out.no_weight_decay()
    assert model.num_layers == 4
    assert model.layer_id("patch_embed.proj.weight") == 0
    assert model.layer_id("blocks.1.mlp.fc1.weight") == 2
    assert model.layer_id("norm.weight") == 3
