"""Attention maps of reference points: the numbers against the eager forward, masks, PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from beit_ds.models import build_model, model_config
from beit_ds.models.attention import Attention
from beit_ds.visualize.attention import (
    Query,
    attention_figure,
    attention_maps,
    jaccard,
    keep_mass,
    parse_query,
)
from beit_ds.visualize.canvas import save_png


def _model(impl: str = "sdpa", bias: str = "per_layer") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_config("beit_debug_patch4_32", attn_impl=impl, rel_pos_bias=bias)).eval()


@pytest.mark.parametrize("bias", ["per_layer", "shared"])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_recomputed_attention_is_the_eager_forward_attention(monkeypatch, bias, size) -> None:
    model = _model("eager", bias)
    for name, table in model.named_parameters():  # a non-zero relative position bias
        if name.endswith("relative_position_bias_table"):
            torch.nn.init.normal_(table, std=0.5)
    seen: list[torch.Tensor] = []
    original = Attention._eager

    def recording(self, q, k, v, b):  # the softmax the eager forward path computes
        attn = (q * self.scale) @ k.transpose(-2, -1)
        seen.append((attn if b is None else attn + b).softmax(-1))
        return original(self, q, k, v, b)

    monkeypatch.setattr(Attention, "_eager", recording)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        model(x)
    first, eager = seen[0], seen[-1]  # blocks 0 and -1: probabilities [B, heads, T, T]
    queries = [Query(), Query(1, 2), Query(size[0] // 4 - 1, size[1] // 4 - 1)]
    maps = attention_maps(model, x, queries, block=-1)  # [B, Q, heads, h, w]
    gw = size[1] // 4
    tokens = [0, 1 + 1 * gw + 2, 1 + (size[0] // 4 - 1) * gw + gw - 1]
    expected = eager[:, :, tokens, 1:].transpose(1, 2).reshape(maps.shape)
    assert maps.shape == (2, 3, 2, size[0] // 4, size[1] // 4)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=1e-5)
    probs = model.attention_probs(x, 0)
    torch.testing.assert_close(probs, first, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-6, rtol=0)
    # each map + the query's [CLS] share is the full row
    cls_share = eager[:, :, tokens, 0].transpose(1, 2)
    torch.testing.assert_close(maps.sum((-2, -1)) + cls_share, torch.ones(2, 3, 2), atol=1e-6, rtol=0)


def test_sdpa_model_gives_the_same_maps_as_the_eager_model() -> None:
    sdpa, eager = _model("sdpa"), _model("eager")
    eager.load_state_dict(sdpa.state_dict())
    x = torch.randn(1, 3, 32, 32)
    q = [Query(), Query(3, 3)]
    torch.testing.assert_close(
        attention_maps(sdpa, x, q, 0), attention_maps(eager, x, q, 0), atol=1e-6, rtol=0
    )


def test_queries_parse_to_tokens() -> None:
    assert parse_query("cls", 4).token((8, 8)) == 0
    assert parse_query("2,5", 4) == Query(2, 5) and Query(2, 5).token((8, 8)) == 1 + 2 * 8 + 5
    assert parse_query("px:9,5", 4) == Query(1, 2)  # x=9 -> column 2, y=5 -> row 1
    assert Query(1, 2).center(4) == (10.0, 6.0)
    with pytest.raises(ValueError, match="outside the 8x8"):
        Query(8, 0).token((8, 8))
    with pytest.raises(ValueError, match="expected 'cls'"):
        parse_query("a,b", 4)


def test_keep_mass_keeps_the_fewest_patches_holding_the_fraction() -> None:
    m = torch.tensor([[0.1, 0.5], [0.1, 0.3]])
    assert keep_mass(m, 0.5).tolist() == [[False, True], [False, False]]
    assert keep_mass(m, 0.6).tolist() == [[False, True], [False, True]]
    assert keep_mass(m, 0.85).sum() == 3 and keep_mass(m, 1.0).sum() == 4
    assert keep_mass(m * 7, 0.6).tolist() == keep_mass(m, 0.6).tolist()  # mass is relative
    batch = keep_mass(torch.rand(3, 2, 4, 4), 0.6)
    assert batch.shape == (3, 2, 4, 4)
    assert jaccard(torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([1, 0, 1, 0]).bool()) == pytest.approx(
        1 / 3
    )


def _png(tmp_path, name: str, queries: list[Query]) -> np.ndarray:
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 32, 32)
    maps = attention_maps(_model(), (pixels - 0.5) / 0.5, queries)
    path = save_png(attention_figure(pixels, maps, queries, 4, 0.6, scale=2), tmp_path / name)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_attention_png_reads_back(tmp_path) -> None:
    a = _png(tmp_path, "a.png", [Query(), Query(0, 0)])
    # 2 images x 2 queries rows; 3 + 2 heads panels of 64 px + 2 px padding; 12 px captions
    assert a.shape == (2 + 4 * (64 + 12 + 2), 2 + 5 * (64 + 2), 3)
    assert a.std() > 20  # not blank
    assert (tmp_path / "a.png").read_bytes() == (
        _png(tmp_path, "b.png", [Query(), Query(0, 0)]) is not None and (tmp_path / "b.png").read_bytes()
    )  # deterministic
    c = _png(tmp_path, "c.png", [Query(), Query(7, 7)])
    row = 2 + 64 + 12 + 2 + 12  # second row (query 2) of the first image, below its caption
    cls_rows = slice(2 + 12, 2 + 12 + 64)
    mean_panel = slice(2 + 66, 2 + 66 + 64)
    assert np.array_equal(a[cls_rows, mean_panel], c[cls_rows, mean_panel])  # same query, same overlay
    assert np.abs(a[row : row + 64, mean_panel] - c[row : row + 64, mean_panel]).mean() > 5  # other query
