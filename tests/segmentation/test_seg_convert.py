"""Segmentation formats: Hugging Face BeitForSemanticSegmentation parity (the oracle), unilm / mmseg
strict import, loading any starting weights (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from beit_ds.config import ModelConfig
from beit_ds.config.segmentation import DecoderConfig
from beit_ds.models import build_model
from beit_ds.models.attention import relative_position_index
from beit_ds.segmentation.convert import (
    from_hf_out_indices,
    from_hf_segmentation,
    from_mmseg_state_dict,
    to_hf_segmentation,
    to_mmseg_state_dict,
)
from beit_ds.segmentation.loading import load_segmentation_weights
from beit_ds.segmentation.model import BeitForSegmentation
from tests.conftest import require_module

CFG = ModelConfig(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, drop_path_rate=0.0)
DEC = DecoderConfig(num_classes=5, out_indices=(0, 1, 2, 3), channels=32, aux_channels=16)


def randomised(model: BeitForSegmentation) -> BeitForSegmentation:
    """Non-trivial BN statistics and bias tables, so that a wrong mapping shows in the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("running_mean", "relative_position_bias_table")):
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn.weight", "gamma_1", "gamma_2")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model.eval()


def save_hf(model: BeitForSegmentation, folder: Path) -> Path:
    config, sd = to_hf_segmentation(model)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    full = {"model_type": "beit", "architectures": ["BeitForSemanticSegmentation"], **config}
    (folder / "config.json").write_text(json.dumps(full))
    return folder


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_export_loads_into_hf_with_the_same_logits(tmp_path: Path, size: tuple[int, int]) -> None:
    transformers = require_module("transformers")
    model = randomised(BeitForSegmentation(CFG, DEC))
    hf = transformers.BeitForSemanticSegmentation.from_pretrained(save_hf(model, tmp_path / "hf")).eval()
    assert hf.config.out_indices == [2, 3, 4, 5]  # HF index i = the output after i - 1 blocks
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model.logits(x)
        theirs = hf(pixel_values=x, interpolate_pos_encoding=size != (64, 64)).logits
    assert ours.shape == theirs.shape == (2, 5, size[0] // 4, size[1] // 4)
    tol = 1e-4 if size == (64, 64) else 5e-3  # another grid: HF's and unilm's table resizing differ
    assert (ours - theirs).abs().max() < tol


def test_hf_model_imports_into_ours_with_the_same_logits() -> None:
    transformers = require_module("transformers")
    config = transformers.BeitConfig(
        hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=128, image_size=64,
        patch_size=16, out_indices=[3, 4, 5, 6], use_relative_position_bias=True, use_mean_pooling=True,
        use_auxiliary_head=True, auxiliary_channels=16, num_labels=5, layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    hf = transformers.BeitForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for name, t in hf.state_dict().items():
            if name.endswith(("running_mean", "relative_position_bias_table")):
                t.normal_()
    ours_indices = from_hf_out_indices(config.out_indices)
    assert ours_indices == (1, 2, 3, 4)
    model = BeitForSegmentation(ModelConfig(img_size=64, embed_dim=32, depth=6, num_heads=2, drop_path_rate=0.0),
                                DecoderConfig(num_classes=5, out_indices=ours_indices, channels=32, aux_channels=16))
    model.load_state_dict(from_hf_segmentation(hf.state_dict(), blocks=len(model.backbone.blocks)), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model.eval().logits(x) - hf(pixel_values=x).logits).abs().max() < 1e-4
    with pytest.raises(ValueError, match="patch embedding"):
        from_hf_out_indices([1, 2, 3, 4])


def unilm_file(model: BeitForSegmentation, path: Path) -> Path:
    """What unilm's mmseg runner saves: ``{"meta", "state_dict"}``, the pyramid under
    ``backbone.``, the (persistent in unilm) relative-position index buffers."""
    sd = to_mmseg_state_dict(model.state_dict())
    index = relative_position_index(CFG.grid_size)
    for i in range(len(model.backbone.blocks)):
        sd[f"backbone.blocks.{i}.attn.relative_position_index"] = index
    torch.save({"meta": {"iter": 160000}, "state_dict": sd}, path)
    return path


def test_unilm_mmseg_layout_imports_strictly(tmp_path: Path) -> None:
    model = randomised(BeitForSegmentation(CFG, DEC))
    raw = torch.load(unilm_file(model, tmp_path / "iter_160000.pth"), weights_only=True)
    keys = raw["state_dict"].keys()
    assert {"backbone.fpn1.0.weight", "backbone.fpn1.1.running_var", "backbone.fpn1.3.weight", "backbone.fpn2.0.bias",
            "decode_head.psp_modules.3.1.conv.weight", "decode_head.bottleneck.bn.weight",
            "decode_head.fpn_bottleneck.conv.weight", "decode_head.conv_seg.bias",
            "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight"} <= set(keys)
    fresh = BeitForSegmentation(CFG, DEC).eval()
    fresh.load_state_dict(from_mmseg_state_dict(raw), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh.logits(x), model.logits(x))


def test_loading_dispatches_on_what_the_weights_are(tmp_path: Path) -> None:
    model = randomised(BeitForSegmentation(CFG, DEC))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.logits(x)
    hf_file = save_hf(model, tmp_path / "hf") / "model.safetensors"
    for sd in (model.state_dict(), torch.load(unilm_file(model, tmp_path / "u.pth"), weights_only=True)["state_dict"],
               load_file(hf_file)):
        fresh = BeitForSegmentation(CFG, DEC).eval()
        assert load_segmentation_weights(fresh, sd, "test") == []
        with torch.no_grad():
            assert (fresh.logits(x) - want).abs().max() < 1e-5
    # a backbone (a pre-training model with a shared bias table at another grid): heads stay fresh
    backbone = build_model(ModelConfig(img_size=32, embed_dim=32, depth=4, num_heads=2, rel_pos_bias="shared"))
    fresh = BeitForSegmentation(CFG, DEC)
    left = load_segmentation_weights(fresh, backbone.state_dict(), "test")
    assert left and all(k.startswith(("neck.", "decode_head.", "auxiliary_head.")) for k in left)
    table = fresh.backbone.block_list()[0].attn.relative_position_bias_table  # type: ignore[union-attr]
    assert table.shape[0] == (2 * 4 - 1) ** 2 + 3  # resized to the 4x4 grid of the 64² crop
    with pytest.raises(ValueError, match="decode"):
        other = BeitForSegmentation(CFG, DecoderConfig(num_classes=7, out_indices=(0, 1, 2, 3), channels=32, aux_channels=16))
        load_segmentation_weights(other, model.state_dict(), "test")
