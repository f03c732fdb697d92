"""Format conversion: our BEiT loads strictly into timm and Hugging Face with equal outputs, and back."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from beit_ds.config import ConfigError
from beit_ds.models import build_mim_model, build_model, create_model, model_config
from beit_ds.models.convert import (
    backbone_state_dict,
    from_hf_state_dict,
    from_timm_state_dict,
    hf_config,
    timm_kwargs,
    timm_model_name,
    to_hf,
    to_timm,
)
from tests.conftest import require_module
from tests.models.conftest import randomise as _randomise

transformers = require_module("transformers")  # a dev extra, not a dependency
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import BeitConfig, BeitForImageClassification, BeitModel  # noqa: E402

DEBUG = "beit_debug_patch4_32"
ATOL = 1e-4
# transformers 5 renamed BeitModel's modules (q_proj, layers.{i}) and renames hub files on load;
# in 4.x the module names were the hub names.
HF_LAYOUT = "module" if int(transformers.__version__.split(".")[0]) >= 5 else "hub"

VARIANTS = {
    "per_layer_bias": {},
    "shared_bias": dict(rel_pos_bias="shared"),
    "abs_pos_no_rel_bias": dict(use_abs_pos_emb=True, rel_pos_bias="none"),
    "no_layer_scale": dict(layer_scale_init=0.0),
    "avg_pool_head": dict(global_pool="avg", num_classes=5),
    "token_pool_head": dict(global_pool="token", num_classes=3),
    "mim_backbone": dict(rel_pos_bias="shared"),
    "no_qkv_bias_eps1e-5": dict(qkv_bias=False, norm_eps=1e-5),  # export only: HF has q/v biases
}
ROUND_TRIP = [v for v in VARIANTS if v != "no_qkv_bias_eps1e-5"]




def _ours(variant: str) -> nn.Module:
    cfg = model_config(DEBUG, **VARIANTS[variant])
    model = build_mim_model(cfg) if variant == "mim_backbone" else build_model(cfg)
    return _randomise(model)


def _images(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= ATOL
    assert a.std().item() > 0.1  # a meaningful comparison, not of near-zero outputs


def _hf_model(config: dict, head: bool) -> nn.Module:
    cls = BeitForImageClassification if head else BeitModel
    return cls(BeitConfig(**config)).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_loads_strictly_and_matches(variant):
    model, x = _ours(variant), _images()
    export = to_timm(model)
    assert not set(export.state_dict) & {"mask_token", "lm_head.weight", "lm_head.bias"}
    theirs = timm.create_model(export.model_name, pretrained=False, **export.kwargs).eval()
    theirs.load_state_dict(export.state_dict, strict=True)
    with torch.no_grad():
        tokens = model.forward_features(x)
        _close(theirs.forward_features(x), tokens)
        # logits with a classifier, else the pooled features (timm's head is then Identity)
        _close(theirs.forward_head(tokens), model.forward_head(tokens))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_loads_strictly_and_matches(variant):
    model, x = _ours(variant), _images()
    export = to_hf(model, layout=HF_LAYOUT)
    # BeitModel's default add_pooling_layer=True is needed: with use_mean_pooling (our global_pool
    # "avg") the pooler owns pooler.layernorm = our fc_norm; otherwise it has no parameters.
    theirs = _hf_model(export.config, head=False)
    theirs.load_state_dict(export.state_dict, strict=True)
    with torch.no_grad():
        out = theirs(pixel_values=x)
        tokens = model.forward_features(x)
        _close(out.last_hidden_state, tokens)
        _close(out.pooler_output, model.pool(tokens))


@pytest.mark.parametrize("variant", ["avg_pool_head", "token_pool_head"])
def test_hf_image_classification_logits_match(variant):
    model, x = _ours(variant), _images()
    export = to_hf(model, layout=HF_LAYOUT)
    assert set(export.head) == {"classifier.weight", "classifier.bias"}
    theirs = _hf_model(export.config, head=True)
    theirs.load_state_dict(export.for_image_classification(), strict=True)
    with torch.no_grad():
        _close(theirs(pixel_values=x).logits, model(x))


@pytest.mark.parametrize("variant", ROUND_TRIP)
def test_round_trips_restore_every_tensor(variant):
    model = _ours(variant)
    ours = backbone_state_dict(model.state_dict())
    for layout in ("module", "hub"):
        back = from_hf_state_dict(to_hf(model, layout=layout).for_image_classification())
        assert list(back) == list(ours)
        assert all(torch.equal(back[k], ours[k]) for k in ours)
    back = from_timm_state_dict(to_timm(model).state_dict)
    assert list(back) == list(ours) and all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.mark.parametrize("variant", ROUND_TRIP)
def test_timm_weights_import_into_ours(variant):
    cfg = model_config(DEBUG, **VARIANTS[variant])
    theirs = timm.create_model(timm_model_name(cfg), pretrained=False, **timm_kwargs(cfg))
    theirs = _randomise(theirs, seed=2)
    model = build_model(cfg).eval()
    model.load_state_dict(from_timm_state_dict(theirs.state_dict()), strict=True)
    x = _images()
    with torch.no_grad():
        _close(model.forward_features(x), theirs.forward_features(x))
        _close(model(x), theirs(x))


@pytest.mark.parametrize("variant", ROUND_TRIP)
def test_hf_weights_import_into_ours(variant):
    cfg = model_config(DEBUG, **VARIANTS[variant])
    head = cfg.num_classes > 0
    theirs = _randomise(_hf_model(hf_config(cfg), head=head), seed=3)
    model = build_model(cfg).eval()
    model.load_state_dict(from_hf_state_dict(theirs.state_dict()), strict=True)
    x = _images()
    with torch.no_grad():
        out = theirs(pixel_values=x)
        _close(model(x), out.logits if head else out.pooler_output)


def test_hub_files_round_trip_through_from_pretrained_and_save_pretrained(tmp_path):
    model, x = _ours("shared_bias"), _images()
    export = to_hf(model, layout="hub")
    BeitConfig(**export.config).save_pretrained(tmp_path)
    save_file(export.state_dict, str(tmp_path / "model.safetensors"))
    theirs, info = BeitModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        _close(theirs.eval()(pixel_values=x).last_hidden_state, model.forward_features(x))
    theirs.save_pretrained(tmp_path / "saved")
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert any(k.startswith("encoder.layer.0.attention.attention.query") for k in saved)  # hub names
    back = from_hf_state_dict(saved)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_unilm_checkpoint_is_our_layout():
    # unilm persists the relative position index buffers; everything else is our key set.
    model = _ours("mim_backbone")
    checkpoint = model.state_dict() | {
        name: buf for name, buf in model.named_buffers() if name.endswith("relative_position_index")
    }
    assert len(checkpoint) == len(model.state_dict()) + 1  # rel_pos_bias.relative_position_index
    restored = build_mim_model(model.cfg)
    restored.load_state_dict(from_timm_state_dict(checkpoint), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(restored.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize(
    "name, timm_name",
    [
        ("beit_base_patch16_224", "beit_base_patch16_224"),
        ("beit_large_patch16_512", "beit_large_patch16_512"),
        ("beit_tiny_patch16_224", "beit_base_patch16_224"),  # not in timm: kwargs give the size
    ],
)
def test_real_sizes_load_strictly(name, timm_name):
    # Keys and shapes only: on the meta device nothing is allocated or initialised.
    with torch.device("meta"):
        model = create_model(name, global_pool="avg", num_classes=1000)
        export = to_timm(model)
        timm.create_model(export.model_name, pretrained=False, **export.kwargs).load_state_dict(
            export.state_dict, strict=True
        )
        hf = to_hf(model, layout=HF_LAYOUT)
        _hf_model(hf.config, head=True).load_state_dict(hf.for_image_classification(), strict=True)
        if name == timm_name:  # the literal check: timm's defaults (avg pool, 1000 classes)
            timm.create_model(timm_name, pretrained=False).load_state_dict(export.state_dict, strict=True)
    assert export.model_name == timm_name


def test_foreign_architectures_raise_one_line_errors():
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2
    )
    with pytest.raises(
        ValueError, match=r"unexpected 2 keys \(blocks.0.attn.qkv.bias, blocks.1.attn.qkv.bias\)"
    ):
        from_timm_state_dict(vit.state_dict())
    hf_vit = transformers.ViTModel(
        transformers.ViTConfig(
            image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2
        )
    )
    with pytest.raises(ValueError, match=r"^from_hf_state_dict: .*unexpected 4 keys") as err:
        from_hf_state_dict(hf_vit.state_dict())
    assert "\n" not in str(err.value) and "pooler.dense.weight" in str(err.value)


def test_missing_keys_are_named_in_the_input_layout():
    model = _ours("per_layer_bias")
    sd = to_hf(model, layout="hub").state_dict
    del sd["encoder.layer.1.attention.attention.key.weight"], sd["embeddings.cls_token"]
    with pytest.raises(
        ValueError,
        match=r"missing 2 keys \(embeddings.cls_token, encoder.layer.1.attention.attention.key.weight\)$",
    ):
        from_hf_state_dict(sd)
    sd = model.state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(
        ValueError, match=r"^from_timm_state_dict: .*missing 1 keys \(blocks.1.mlp.fc2.bias\)$"
    ):
        from_timm_state_dict(sd)
    with pytest.raises(ValueError, match="layout='timm'"):
        to_hf(model, layout="timm")


# --- resolution changes and shared -> per-layer relative bias (issue 7) ----------------------------
from beit_ds.models.attention import bias_table_rows  # noqa: E402
from beit_ds.models.convert import (  # noqa: E402
    adapt_positions,
    resize_pos_embed,
    resize_rel_pos_table,
    shared_to_per_layer,
)


def test_same_grid_is_the_identity_and_the_model_is_unchanged():
    for variant in ("shared_bias", "abs_pos_no_rel_bias", "avg_pool_head"):
        model = _ours(variant)
        sd = adapt_positions(model.state_dict(), model.cfg)
        assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
        again = build_model(model.cfg).eval()
        again.load_state_dict(sd, strict=True)
        with torch.no_grad():
            assert torch.equal(again(_images()), model(_images()))


def test_shared_bias_as_per_layer_tables_computes_the_same_function():
    shared = _ours("shared_bias")
    per_layer_cfg = shared.cfg.replace(rel_pos_bias="per_layer")
    sd = shared_to_per_layer(shared.state_dict(), shared.cfg.depth)
    assert "rel_pos_bias.relative_position_bias_table" not in sd
    per_layer = build_model(per_layer_cfg).eval()
    per_layer.load_state_dict(adapt_positions(shared.state_dict(), per_layer_cfg), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(per_layer.forward_features(_images()), shared.forward_features(_images()))


def test_pos_embed_224_to_384_shapes_and_values():
    # the debug preset's 8x8 grid -> 14x14 stands for 224² (14x14) -> 384² (24x24)
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8, generator=g)
    out = resize_pos_embed(pos, (24, 24))
    assert out.shape == (1, 1 + 24 * 24, 8)
    assert torch.equal(out[:, 0], pos[:, 0])  # [CLS] kept
    const = torch.full((1, 1 + 14 * 14, 4), 0.7)
    torch.testing.assert_close(resize_pos_embed(const, (24, 24)), torch.full((1, 1 + 24 * 24, 4), 0.7))
    assert resize_pos_embed(pos, (14, 14)) is pos
    # a smooth ramp stays a ramp: the first row/column ends keep their sign, the mean is kept
    ramp = torch.linspace(-1, 1, 14).repeat(14, 1).reshape(1, 196, 1)
    ramp_out = resize_pos_embed(torch.cat([torch.zeros(1, 1, 1), ramp], 1), (24, 24))[0, 1:, 0].reshape(
        24, 24
    )
    assert ramp_out.mean().abs().item() < 1e-5 and (ramp_out[:, 1:] >= ramp_out[:, :-1] - 1e-6).all()


@pytest.mark.parametrize("method", ["geometric", "bicubic"])
def test_rel_pos_table_224_to_384_shapes_and_values(method):
    heads = 3
    table = torch.randn(bias_table_rows((14, 14)), heads, generator=torch.Generator().manual_seed(0))
    out = resize_rel_pos_table(table, (24, 24), method)
    assert table.shape == (27 * 27 + 3, heads) and out.shape == (47 * 47 + 3, heads)
    assert torch.equal(out[-3:], table[-3:])  # cls->patch, patch->cls, cls->cls rows kept
    old = table[:-3].reshape(27, 27, heads)
    new = out[:-3].reshape(47, 47, heads)
    torch.testing.assert_close(new[23, 23], old[13, 13])  # zero offset keeps its bias
    for corner in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # largest offsets land on the largest offsets
        torch.testing.assert_close(new[corner], old[corner])
    const = torch.full_like(table, -0.3)
    torch.testing.assert_close(resize_rel_pos_table(const, (24, 24), method), torch.full_like(out, -0.3))
    assert resize_rel_pos_table(table, (14, 14), method) is table


def _local_head() -> torch.Tensor:
    """One sharply local head on the 14×14 grid: bias 3·exp(-2·|d|²) of the offset d (3 at d = 0,
    0.406 at the four neighbours, ≈ 0 beyond 2), cls rows -1."""
    d = torch.arange(-13, 14, dtype=torch.float32)
    image = 3.0 * torch.exp(-2.0 * (d[:, None] ** 2 + d[None, :] ** 2))
    return torch.cat((image.reshape(-1, 1), torch.full((3, 1), -1.0)))


def test_geometric_resize_keeps_near_offsets_bicubic_blurs_them():
    table = _local_head()
    old = table[:-3].reshape(27, 27)
    geometric = resize_rel_pos_table(table, (24, 24), "geometric")[:-3].reshape(47, 47)
    bicubic = resize_rel_pos_table(table, (24, 24), "bicubic")[:-3].reshape(47, 47)
    # unilm / timm: offsets 0 and ±1 keep their trained bias exactly
    assert geometric[23, 23].item() == pytest.approx(3.0, abs=1e-6)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        assert geometric[23 + dy, 23 + dx].item() == pytest.approx(old[13 + dy, 13 + dx].item(), abs=1e-6)
    # stretching every offset by 23/13 puts old offset ≈ 0.57 at new offset 1: measured 1.763
    assert bicubic[23, 24].item() == pytest.approx(1.763, abs=0.01)
    assert old[13, 14].item() == pytest.approx(0.406, abs=0.001)


def test_geometric_resize_matches_timm_resize_rel_pos_bias_table():
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    g = torch.Generator().manual_seed(0)
    for src, dst in (((14, 14), (24, 24)), ((8, 8), (12, 12)), ((24, 24), (14, 14)), ((14, 14), (16, 32))):
        table = torch.randn(bias_table_rows(src), 4, generator=g)
        ours = resize_rel_pos_table(table, dst, "geometric")
        theirs = resize_rel_pos_bias_table(table, dst, (bias_table_rows(dst), 4))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_model_rel_pos_resize_selects_the_method():
    model = _ours("per_layer_bias")
    sd = model.state_dict()
    key = "blocks.0.attn.relative_position_bias_table"
    for method in ("geometric", "bicubic"):
        cfg = model.cfg.replace(img_size=48, rel_pos_resize=method)
        expected = resize_rel_pos_table(sd[key], cfg.grid_size, method)
        assert torch.equal(adapt_positions(sd, cfg)[key], expected)
    with pytest.raises(ConfigError, match="model.rel_pos_resize='cubic'"):
        model.cfg.replace(rel_pos_resize="cubic")


def test_a_32px_model_runs_at_48px_after_interpolation():
    for variant in ("per_layer_bias", "abs_pos_no_rel_bias"):
        small = _ours(variant)
        big = build_model(small.cfg.replace(img_size=48)).eval()  # 8x8 -> 12x12 patches
        big.load_state_dict(adapt_positions(small.state_dict(), big.cfg), strict=True)
        x = torch.nn.functional.interpolate(_images(), size=48, mode="bicubic", align_corners=False)
        with torch.no_grad():
            out = big.forward_features(x)
        assert out.shape == (2, 1 + 144, 32) and torch.isfinite(out).all()
        assert torch.equal(big.patch_embed.proj.weight, small.patch_embed.proj.weight)


def test_a_different_patch_size_is_a_one_line_error():
    model = _ours("per_layer_bias")
    with pytest.raises(
        ValueError, match=r"^the weights have 4x4 patches: expected model.patch_size=8 \(resolution"
    ):
        adapt_positions(model.state_dict(), model.cfg.replace(patch_size=8))
