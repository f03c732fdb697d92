"""BEiT v2's patch aggregation (``mim.aggregation``, ``models/mim.py``): shapes and the summed
loss against a reference built from the blocks by hand, unilm's initialisation and drop-path
ramp, parameter groups, BEiT v1 untouched when off, and the backbone export (aggregation head
dropped) in timm's ``beitv2_*`` layout and Hugging Face's ``BeitModel`` with the same features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from beit_ds.config import MIMConfig
from beit_ds.config.model import AggregationConfig
from beit_ds.masking import BlockwiseMaskGenerator
from beit_ds.models import build_classifier, build_mim_model, build_model, load_backbone, model_config
from beit_ds.models.convert import backbone_state_dict, from_timm_state_dict, to_hf, to_timm
from beit_ds.models.layers import drop_path_rates
from beit_ds.optim import param_groups
from tests.conftest import require_module
from tests.models.conftest import randomise

VOCAB = 50
CFG = model_config("beit_debug_patch4_32", depth=4, rel_pos_bias="shared", drop_path_rate=0.1)


def _v2(cfg=CFG, early: int = 3, enabled: bool = True):
    agg = AggregationConfig(enabled=enabled, early_layer=early, depth=2)
    return build_mim_model(cfg, MIMConfig(vocab_size=VOCAB, max_masked=26, aggregation=agg))


def _batch(b: int = 3):
    gen = BlockwiseMaskGenerator((8, 8), 26, min_block_patches=4)
    mask = torch.from_numpy(np.stack([gen(np.random.default_rng(i)) for i in range(b)]))
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 32, 32, generator=g), mask, torch.randint(0, VOCAB, (b, 8, 8), generator=g)


def test_patch_aggregation_shapes_and_summed_loss_match_a_reference_by_hand():
    torch.manual_seed(0)
    model = randomise(_v2(), seed=3)  # eval mode: no drop path
    images, mask, tokens = _batch()
    out = model(images, mask, tokens)
    # reference: block 3's patch tokens and block 4's [CLS] (before the final norm), read by hooks
    seen = {}
    for i in (2, 3):
        model.blocks[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o))
    model.forward_features(images, mask)
    h = torch.cat((seen[3][:, :1], seen[2][:, 1:]), dim=1)
    assert h.shape == (3, 1 + 64, CFG.embed_dim)
    for block in model.cls_pt_layers:
        h = block(h, model.rel_pos_bias(None))
    flat, labels = mask.flatten(1), tokens.flatten(1)
    head = model.lm_head(model.norm(h)[:, 1:][flat])  # the shared norm and LM head
    last = model.lm_head(model.norm(seen[3])[:, 1:][flat])
    agg_loss, last_loss = F.cross_entropy(head, labels[flat]), F.cross_entropy(last, labels[flat])
    torch.testing.assert_close(out.parts["agg_loss"], agg_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.parts["mim_loss"], last_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, last_loss + agg_loss, atol=1e-5, rtol=1e-5)  # the sum (unilm)
    acc = (head.argmax(-1) == labels[flat]).float().mean()
    torch.testing.assert_close(out.parts["agg_accuracy"], acc)
    assert out.logits.shape == (3 * 26, VOCAB)  # the last layer's masked-only rows, as v1
    assert not out.parts["agg_loss"].requires_grad and out.loss.requires_grad


def test_the_head_starts_as_unilms_and_only_the_sum_trains_it():
    torch.manual_seed(0)
    model = _v2(model_config("beit_debug_patch4_32", depth=4, drop_path_rate=0.4), early=3).train()
    assert len(model.cls_pt_layers) == 2
    # drop path continues the backbone's ramp over max(depth, 3 + 2) = 5 blocks: entries 3 and 4
    assert [b.drop_path.p for b in model.cls_pt_layers] == drop_path_rates(0.4, 5)[3:5] == pytest.approx([0.3, 0.4])
    for layer, block in enumerate(model.cls_pt_layers, start=4):  # PyTorch's default init / sqrt(2·layer)
        bound = 1 / math.sqrt(block.attn.proj.in_features) / math.sqrt(2 * layer)
        assert block.attn.proj.weight.abs().max() <= bound and block.attn.proj.weight.abs().max() > 0.9 * bound
        assert block.attn.proj.bias.abs().max() > 0  # PyTorch's default bias, not zero
    names = {n for n, _ in model.named_parameters() if n.startswith("cls_pt_layers.")}
    assert "cls_pt_layers.1.attn.qkv.weight" in names and "cls_pt_layers.0.gamma_1" in names
    images, mask, tokens = _batch()
    model(images, mask, tokens).loss.backward()
    assert model.cls_pt_layers[1].mlp.fc2.weight.grad.abs().sum() > 0
    assert model.cls_token.grad.abs().sum() > 0 and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_parameter_groups_treat_the_head_as_the_last_layer():
    model = _v2()
    assert model.layer_id("cls_pt_layers.0.attn.qkv.weight") == model.num_layers - 1 == model.layer_id("lm_head.weight")
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.65)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert decay[id(params["cls_pt_layers.0.mlp.fc1.weight"])] == 0.05
    assert decay[id(params["cls_pt_layers.0.mlp.fc1.bias"])] == decay[id(params["cls_pt_layers.1.gamma_2"])] == 0.0
    assert scale[id(params["cls_pt_layers.1.attn.qkv.weight"])] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(params)


def test_aggregation_off_leaves_beit_v1_unchanged():
    torch.manual_seed(0)
    v1 = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB, max_masked=26))
    torch.manual_seed(0)
    off = _v2(enabled=False)
    torch.manual_seed(0)
    on = _v2()
    assert off.cls_pt_layers is None and list(off.state_dict()) == list(v1.state_dict())
    v1_sd, on_sd = v1.state_dict(), on.state_dict()
    assert all(torch.equal(v1_sd[k], on_sd[k]) for k in v1_sd)  # the head is built last: same backbone init
    assert set(on_sd) - set(v1_sd) == {k for k in on_sd if k.startswith("cls_pt_layers.")}
    images, mask, tokens = _batch()
    v1.eval(), on.eval()
    out, out_on = v1(images, mask, tokens), on(images, mask, tokens)
    assert out.parts == {}
    torch.testing.assert_close(out_on.parts["mim_loss"], out.loss)


def test_backbone_export_drops_the_head_and_matches_timm_beitv2_and_hf():
    require_module("transformers")
    from transformers import BeitConfig, BeitModel

    mim = randomise(_v2(), seed=5)
    backbone = build_model(CFG).eval()
    backbone.load_state_dict(backbone_state_dict(mim.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    export = to_timm(backbone, v2=True)
    assert export.model_name == "beitv2_base_patch16_224" and not any("cls_pt" in k for k in export.state_dict)
    theirs = timm.create_model(export.model_name, pretrained=False, **export.kwargs).eval()
    theirs.load_state_dict(export.state_dict, strict=True)
    hf = to_hf(backbone)
    hf_model = BeitModel(BeitConfig(**hf.config)).eval()
    hf_model.load_state_dict(hf.state_dict, strict=True)
    with torch.no_grad():
        feats = mim.forward_features(x)  # the MIM model's backbone features, no mask
        assert feats.std() > 0.1
        torch.testing.assert_close(backbone.forward_features(x), feats, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.forward_features(x), feats, atol=1e-4, rtol=0)
        torch.testing.assert_close(hf_model(pixel_values=x).last_hidden_state, feats, atol=1e-4, rtol=0)


def test_unilm_v2_checkpoint_initialises_a_classifier_without_the_head():
    cfg = model_config("beit_debug_patch4_32", depth=4)  # per-layer tables: the head has its own
    mim = _v2(cfg)
    unilm = mim.state_dict() | {f"cls_pt_layers.{i}.attn.relative_position_index": torch.zeros(3) for i in (0, 1)}
    unilm |= {"cls_pt_norm.weight": torch.ones(cfg.embed_dim), "cls_pt_norm.bias": torch.zeros(cfg.embed_dim)}
    ours = from_timm_state_dict(unilm)  # unilm's layout = ours; its derivable index buffers dropped
    assert "cls_pt_layers.0.attn.relative_position_bias_table" in ours
    assert "cls_pt_layers.0.attn.relative_position_index" not in ours
    classifier = build_classifier(cfg.replace(global_pool="avg", num_classes=3))
    left = load_backbone(classifier, ours, "reset", "unilm v2")
    assert left == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    torch.testing.assert_close(classifier.blocks[3].mlp.fc2.weight, mim.blocks[3].mlp.fc2.weight)


def test_v2_forward_and_loss_compile_fullgraph_without_host_syncs():
    """The aggregation branch keeps the MIM path free of host syncs (house style rule 24)."""
    torch.manual_seed(0)
    cfg = model_config("beit_debug_patch4_32", depth=1, rel_pos_bias="shared", drop_path_rate=0.0)
    agg = AggregationConfig(enabled=True, early_layer=1, depth=1)
    model = build_mim_model(cfg, MIMConfig(vocab_size=VOCAB, max_masked=26, aggregation=agg)).train()
    images, mask, tokens = _batch(2)

    def forward_and_loss(images, mask, tokens):
        out = model(images, mask, tokens)
        return out.loss, out.parts["agg_loss"], out.parts["agg_accuracy"]

    compiled = torch.compile(forward_and_loss, fullgraph=True, backend="eager")(images, mask, tokens)  # tracing is the check
    eager = forward_and_loss(images, mask, tokens)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_activation_checkpointing_and_bf16_keep_the_v2_loss():
    """Recomputing the blocks (head included) in backward changes no number; a bf16 forward of the
    tiny model stays within bf16 rounding of fp32."""
    torch.manual_seed(0)
    cfg = model_config("beit_debug_patch4_32", depth=2, rel_pos_bias="shared", drop_path_rate=0.0)
    agg = AggregationConfig(enabled=True, early_layer=1, depth=2)
    model = build_mim_model(cfg, MIMConfig(vocab_size=VOCAB, max_masked=26, aggregation=agg)).train()
    images, mask, tokens = _batch(2)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(images, mask, tokens)
        out.loss.backward()
        grads.append((out.loss.detach(), model.cls_pt_layers[0].attn.qkv.weight.grad.clone(), model.cls_token.grad.clone()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        half = model.to(torch.bfloat16)(images.bfloat16(), mask, tokens)
    torch.testing.assert_close(half.loss.float(), grads[0][0], atol=0.05, rtol=0.01)
