"""Backbone loading as a free function (any model that contains a Beit), the linear probe built
on ``forward_intermediates``. ``load_export`` of export folders: tests/tasks/test_exported.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from beit_ds.config import MIMConfig
from beit_ds.models import (
    BeitForMaskedImageModeling,
    build_classifier,
    build_mim_model,
    build_model,
    load_backbone,
    model_config,
)
from tests.models.conftest import randomise as _randomise

DEBUG = "beit_debug_patch4_32"




def _x(h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))


def _pretrained(depth: int = 3) -> BeitForMaskedImageModeling:
    cfg = model_config(DEBUG, depth=depth, rel_pos_bias="shared", use_abs_pos_emb=True)
    return _randomise(build_mim_model(cfg, MIMConfig(vocab_size=16)))


class _Segmenter(nn.Module):
    """Backbone + decoder: what a segmentation task builds; it loads with ``load_backbone``."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        cfg = model_config(DEBUG, depth=depth, rel_pos_bias="per_layer", use_abs_pos_emb=True, img_size=48)
        self.backbone = build_model(cfg)
        self.decoder = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone.forward_intermediates(x, [-1], intermediates_only=True)[0])


def test_a_wrapper_loads_pretrained_weights_like_the_classifier():
    """MIM keys dropped, shared table -> per layer, 32 -> 48 positions: the wrapped backbone ends
    with exactly the weights the classifier's ``load_backbone`` gives the same backbone."""
    mim = _pretrained()
    seg = _Segmenter()
    fresh = load_backbone(seg.backbone, mim.state_dict(), source="init")
    assert fresh == []  # no head, no fc_norm: every backbone key comes from the checkpoint
    clf = build_classifier(seg.backbone.cfg.replace(global_pool="token", num_classes=5))
    assert clf.load_backbone(mim.state_dict()) == ["head.bias", "head.weight"]
    for key, value in seg.backbone.state_dict().items():
        torch.testing.assert_close(value, clf.state_dict()[key], atol=0, rtol=0)
    assert seg(_x(48, 64)).shape == (2, 4, 12, 16)  # and it runs at another size
    with pytest.raises(
        ValueError, match=r"^init: does not fit this model: unexpected 30 keys \(blocks.3.gamma_1"
    ):
        load_backbone(_Segmenter(depth=3).backbone, _pretrained(depth=5).state_dict(), source="init")
    with pytest.raises(ValueError, match="head='drop': expected one of auto, reset, keep"):
        load_backbone(seg.backbone, mim.state_dict(), head="drop")


@pytest.mark.parametrize("pool", ["mean", "cls_mean"])
def test_probe_reads_block_k_from_forward_intermediates_with_todays_keys(pool):
    full = _randomise(build_classifier(model_config(DEBUG, depth=3, global_pool="avg", num_classes=5)))
    probe = build_classifier(full.cfg, probe_layer=2, probe_pool=pool)
    probe.load_backbone(full.state_dict(), head="reset")
    # the state dict of before issue 13: blocks 0..k-1, no norm / fc_norm, the head
    expected_keys = [
        k for k in full.state_dict() if not k.startswith(("blocks.2.", "norm.", "fc_norm.", "head."))
    ] + ["head.weight", "head.bias"]
    assert list(probe.state_dict()) == expected_keys
    x = _x()
    with torch.no_grad():
        patches, cls = full.forward_intermediates(
            x, [1], return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
        )[0]
        features = patches.mean(1) if pool == "mean" else torch.cat((cls[:, 0], patches.mean(1)), -1)
        torch.testing.assert_close(probe(x), probe.head(features), atol=0, rtol=0)
