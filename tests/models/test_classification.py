"""BeitForImageClassification: pooling, head init, linear-probe taps, loading rules, loss."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from beit_ds.config import MIMConfig
from beit_ds.data.mixup import smoothed_one_hot
from beit_ds.models import build_classifier, build_mim_model, model_config
from beit_ds.models.classification import soft_target_cross_entropy
from beit_ds.models.convert import to_timm

DEBUG = "beit_debug_patch4_32"


def _cfg(**kw):
    return model_config(DEBUG, **{"global_pool": "avg", "num_classes": 5, **kw})


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _x(b=3):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_mean_pooling_with_fc_norm_and_cls_pooling():
    model = _randomise(build_classifier(_cfg()))
    x = _x()
    with torch.no_grad():
        tokens = model.forward_features(x)  # [B, 1 + 64, D], no final norm with mean pooling
        expected = model.head(model.fc_norm(tokens[:, 1:].mean(1)))
        torch.testing.assert_close(model(x), expected)
    assert tokens.shape == (3, 65, 32) and model.fc_norm is not None
    cls_model = _randomise(build_classifier(_cfg(global_pool="token")))
    with torch.no_grad():
        tokens = cls_model.forward_features(x)
        torch.testing.assert_close(cls_model(x), cls_model.head(tokens[:, 0]))
    assert cls_model.fc_norm is None


def test_logits_equal_timm_with_the_same_weights():
    model = _randomise(build_classifier(_cfg()))
    export = to_timm(model)
    theirs = timm.create_model(export.model_name, pretrained=False, **export.kwargs).eval()
    theirs.load_state_dict(export.state_dict, strict=True)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), atol=1e-4, rtol=0)


def test_head_starts_small_and_predictions_near_uniform():
    model = build_classifier(
        model_config("beit_base_patch16_224", global_pool="avg", num_classes=1000, depth=1)
    )
    std = model.head.weight.std().item()
    # unilm modeling_finetune.py: timm's trunc_normal_(std=0.02) (cut at ±2 absolute, i.e. a plain
    # normal) × init_scale 0.001: std 2.0e-5 (measured 2.00e-5)
    assert std == pytest.approx(0.02 * 0.001, rel=0.03)
    assert model.head.bias.abs().max().item() == 0.0
    torch.manual_seed(0)
    small = build_classifier(_cfg())
    torch.manual_seed(0)
    big = build_classifier(_cfg(), head_init_scale=1.0)
    torch.testing.assert_close(small.head.weight, big.head.weight * 0.001)


def test_probe_taps_block_k_and_trains_only_the_head():
    full = _randomise(build_classifier(_cfg(depth=3)))
    probe = build_classifier(_cfg(depth=3), probe_layer=2)
    fresh = probe.load_backbone(full.state_dict(), head="keep")
    assert fresh == [] and len(probe.blocks) == 2
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    x = _x()
    with torch.no_grad():
        tokens = full.embed(x)
        for block in full.blocks[:2]:
            tokens = block(tokens)
        expected = full.head(tokens[:, 1:].mean(1))  # plain mean, no norm
    probe.train()
    assert not probe.training and not probe.blocks[0].training  # the frozen backbone stays in eval
    out = probe(x, smoothed_one_hot(torch.tensor([0, 1, 2]), 5, 0.0))
    torch.testing.assert_close(out.logits, expected)
    out.loss.backward()
    assert probe.head.weight.grad is not None and probe.blocks[0].attn.qkv.weight.grad is None
    with pytest.raises(ValueError, match=r"probe.layer=4: expected a block in \[1, model.depth=3\]"):
        build_classifier(_cfg(depth=3), probe_layer=4)


def test_probe_cls_mean_concatenates_cls_and_mean_as_unilm():
    """unilm run_linear_eval.py: torch.cat((x[:, 0], x[:, 1:].mean(1)), -1) of block k, no norm."""
    full = _randomise(build_classifier(_cfg(depth=3)))
    probe = build_classifier(_cfg(depth=3), probe_layer=2, probe_pool="cls_mean")
    assert probe.head.in_features == 2 * 32  # [CLS] ‖ mean
    probe.load_backbone(full.state_dict(), head="reset")
    x = _x()
    with torch.no_grad():
        tokens = full.embed(x)
        for block in full.blocks[:2]:
            tokens = block(tokens)
        features = torch.cat((tokens[:, 0], tokens[:, 1:].mean(1)), dim=-1)
        torch.testing.assert_close(probe(x), probe.head(features))
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    with pytest.raises(
        ValueError, match="probe.pool='cls_mean': expected 'mean', or 'cls_mean' for a linear probe"
    ):
        build_classifier(_cfg(depth=3), probe_pool="cls_mean")


def test_pretrained_weights_load_norm_becomes_fc_norm_head_reinitialised():
    mim = _randomise(build_mim_model(model_config(DEBUG, rel_pos_bias="shared"), MIMConfig(vocab_size=16)))
    model = build_classifier(_cfg())
    fresh = model.load_backbone(mim.state_dict(), head="auto")
    assert fresh == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert torch.equal(model.blocks[1].mlp.fc1.weight, mim.blocks[1].mlp.fc1.weight)
    table = mim.rel_pos_bias.relative_position_bias_table
    for block in model.blocks:  # the shared table becomes every block's own
        assert torch.equal(block.attn.relative_position_bias_table, table)
    with torch.no_grad():  # the tokens are the MIM backbone's before its final norm
        torch.testing.assert_close(model.forward_features(_x()), _pre_norm(mim, _x()))


def _pre_norm(model, x):
    tokens = model.embed(x)
    shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    for block in model.blocks:
        tokens = block(tokens, shared)
    return tokens


def test_head_policies_and_one_line_errors():
    donor = _randomise(build_classifier(_cfg()))
    same = build_classifier(_cfg())
    assert same.load_backbone(donor.state_dict(), head="keep") == []
    assert torch.equal(same.head.weight, donor.head.weight)
    assert same.load_backbone(donor.state_dict(), head="reset") == ["head.bias", "head.weight"]
    other = build_classifier(_cfg(num_classes=7))
    assert other.load_backbone(donor.state_dict(), head="auto") == ["head.bias", "head.weight"]
    with pytest.raises(
        ValueError, match=r"^w: has a 5-class head, model.num_classes=7 \(set finetune.head=reset"
    ):
        other.load_backbone(donor.state_dict(), head="keep", source="w")
    sd = donor.state_dict() | {"blocks.0.extra": torch.zeros(1)}
    del sd["blocks.1.norm2.bias"]
    with pytest.raises(ValueError) as err:
        same.load_backbone(sd, source="w")
    assert (
        str(err.value)
        == "w: does not fit this model: missing 1 keys (blocks.1.norm2.bias); unexpected 1 keys (blocks.0.extra)"
    )
    wide = _randomise(build_classifier(_cfg(mlp_ratio=2.0)))
    with pytest.raises(
        ValueError, match=r"blocks.0.mlp.fc1.weight has shape \[64, 32\], the model \[128, 32\]"
    ):
        same.load_backbone(wide.state_dict(), source="w")


def test_soft_target_cross_entropy_matches_label_smoothing():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    loss = soft_target_cross_entropy(logits, smoothed_one_hot(labels, 5, 0.1))
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
    model = build_classifier(_cfg())
    out = model(_x(), smoothed_one_hot(torch.tensor([1, 2, 3]), 5, 0.0))
    assert out.logits.shape == (3, 5)
    assert out.loss.item() == pytest.approx(torch.log(torch.tensor(5.0)).item(), abs=1e-3)  # tiny head
