"""The backbone seam (issue 13 §2): ``forward_intermediates`` against timm's, any input size that
is a multiple of the patch size, and one block's attention probabilities."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from beit_ds.models import build_mim_model, build_model, model_config
from beit_ds.models.attention import cached_index, gather_bias
from beit_ds.models.convert import adapt_positions, to_timm
from beit_ds.models.resize import resize_pos_embed, resize_rel_pos_table
from tests.models.conftest import randomise as _randomise

DEBUG = "beit_debug_patch4_32"
VARIANTS = {
    "per_layer_bias": dict(depth=4),
    "shared_bias_abs_pos": dict(depth=4, rel_pos_bias="shared", use_abs_pos_emb=True),
    "avg_pool_head": dict(depth=3, global_pool="avg", num_classes=5, use_abs_pos_emb=True),
}




def _ours(variant: str) -> nn.Module:
    """fp64, so a parity tolerance of 1e-5 measures the computation, not fp32 rounding of
    O(10) features through the blocks of randomised weights."""
    return _randomise(build_model(model_config(DEBUG, **VARIANTS[variant]))).double()


def _images(h: int = 32, w: int = 32, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _timm_at(model: nn.Module, size: tuple[int, int]) -> nn.Module:
    """timm's Beit built at ``size`` with ``model``'s weights, positions resized to its grid by
    the same functions checkpoint conversion uses."""
    export = to_timm(model)
    grid = (size[0] // model.cfg.patch_size, size[1] // model.cfg.patch_size)
    sd = {}
    for key, value in export.state_dict.items():
        if key.endswith("pos_embed"):
            value = resize_pos_embed(value, grid)
        elif key.endswith("relative_position_bias_table"):
            value = resize_rel_pos_table(value, grid, model.cfg.rel_pos_resize)
        sd[key] = value
    theirs = timm.create_model(export.model_name, pretrained=False, **(export.kwargs | {"img_size": size}))
    theirs.load_state_dict(sd, strict=True)
    return theirs.to(next(model.parameters()).dtype).eval()


def _assert_lists_close(ours, theirs, atol: float = 1e-5) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        if isinstance(a, tuple):
            _assert_lists_close(list(a), list(b), atol)
        else:
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=atol, rtol=0)


CASES = [
    dict(indices=None),
    dict(indices=2, norm=True),
    dict(indices=[0, -1], output_fmt="NLC"),
    dict(indices=[1], return_prefix_tokens=True, stop_early=True),
    dict(indices=[-2, 0], norm=True, return_prefix_tokens=True, output_fmt="NLC", stop_early=True),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_forward_intermediates_matches_timm(variant: str, size: tuple[int, int]) -> None:
    """Same weights, same arguments: every returned tensor within 1e-5 of timm's; at 32x48 our
    model is the one built at 32 (resized at run time), timm's is built at 32x48."""
    model = _ours(variant)
    theirs = _timm_at(model, size)
    x = _images(*size)
    with torch.no_grad():
        for kwargs in CASES:
            ours_final, ours = model.forward_intermediates(x, **kwargs)
            timm_final, expected = theirs.forward_intermediates(x, **kwargs)
            _assert_lists_close(ours, expected)
            torch.testing.assert_close(ours_final, timm_final, atol=1e-5, rtol=0)
            only = model.forward_intermediates(x, **kwargs, intermediates_only=True)
            _assert_lists_close(only, ours, atol=0)
        feats = model.forward_intermediates(x, [1], intermediates_only=True)[0]
    gh, gw = size[0] // 4, size[1] // 4
    assert feats.shape == (2, 32, gh, gw)
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match=r"block indices \[7\]"):
        model.forward_intermediates(x, [7])


def test_final_output_is_forward_features_and_prune_drops_keys() -> None:
    model = _ours("per_layer_bias")
    x = _images()
    with torch.no_grad():
        final, _ = model.forward_intermediates(x, 1)
        torch.testing.assert_close(final, model.forward_features(x), atol=0, rtol=0)
        before = model.forward_intermediates(x, [1], intermediates_only=True)[0]
        assert model.prune_intermediate_layers([1], prune_norm=True) == [1]
        after = model.forward_intermediates(x, [1], intermediates_only=True)[0]
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    keys = model.state_dict().keys()
    assert not any(k.startswith(("blocks.2.", "blocks.3.", "norm.", "head.")) for k in keys)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_runtime_size_equals_model_built_at_that_size(variant: str) -> None:
    """Square 48x48: our model built at 32, run at 48, equals ours built at 48 from
    ``adapt_positions`` weights (bitwise up to 1e-6); non-square 32x48 equals timm built there."""
    model = _ours(variant)
    cfg48 = model.cfg.replace(img_size=48)
    built = build_model(cfg48).double().eval()
    built.load_state_dict(adapt_positions(model.state_dict(), cfg48), strict=True)
    with torch.no_grad():
        x = _images(48, 48)
        torch.testing.assert_close(model.forward_features(x), built.forward_features(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x), built(x), atol=1e-6, rtol=0)
        x = _images(32, 48)
        theirs = _timm_at(model, (32, 48))
        torch.testing.assert_close(model.forward_features(x), theirs.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(model(x), theirs(x), atol=1e-5, rtol=0)
        at_built = model(_images())  # the built size still uses the stored tables
    assert torch.isfinite(at_built).all()
    # the runtime tables are cached per grid and stay out of the state dict
    assert cached_index((8, 12), torch.device("cpu")) is cached_index((8, 12), torch.device("cpu"))
    assert model.state_dict().keys() == build_model(model.cfg).state_dict().keys()


def test_runtime_size_trains_the_stored_tables() -> None:
    """At another grid the resized tables are differentiable functions of the stored ones."""
    model = build_mim_model(model_config(DEBUG, rel_pos_bias="shared", use_abs_pos_emb=True))
    images = _images(24, 40).float()
    mask = torch.zeros(2, 6 * 10, dtype=torch.bool)
    mask[:, ::3] = True
    tokens = model.forward_features(images, mask)
    tokens.square().mean().backward()
    assert model.rel_pos_bias.relative_position_bias_table.grad.abs().sum() > 0
    assert model.pos_embed.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0


def _eager_attention(block: nn.Module, tokens: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ/√d + bias) of ``block`` for its input ``tokens``, written out by hand."""
    attn = block.attn
    h = block.norm1(tokens)
    b, t, d = h.shape
    bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
    qkv = (h @ attn.qkv.weight.T + bias).view(b, t, 3, attn.num_heads, d // attn.num_heads)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) / (d // attn.num_heads) ** 0.5
    if attn.relative_position_bias_table is not None:
        scores = scores + gather_bias(attn.relative_position_bias_table, attn.relative_position_index)
    if shared is not None:
        scores = scores + shared
    return scores.softmax(-1)


@pytest.mark.parametrize("variant", ["per_layer_bias", "shared_bias_abs_pos"])
def test_attention_probs_of_one_block(variant: str) -> None:
    model = _ours(variant)
    x = _images()
    shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    with torch.no_grad():
        for index in (0, 2, -1):
            probs = model.attention_probs(x, index)
            i = index % model.cfg.depth
            tokens = model.embed(x)
            for block in model.blocks[:i]:
                tokens = block(tokens, shared)
            expected = _eager_attention(model.blocks[i], tokens, shared)
            assert probs.shape == (2, 2, 65, 65)
            torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(
                probs.sum(-1), torch.ones(2, 2, 65, dtype=torch.float64), atol=1e-5, rtol=0
            )
            # the probabilities reproduce the fused SDPA block output
            attn = model.blocks[i].attn
            h = model.blocks[i].norm1(tokens)
            v = h @ attn.qkv.weight[64:].T + attn.v_bias
            v = v.view(2, 65, 2, 16).transpose(1, 2)
            out = attn.proj((probs @ v).transpose(1, 2).reshape(2, 65, 32))
            torch.testing.assert_close(out, attn(h, shared), atol=1e-5, rtol=0)
        at_other_size = model.attention_probs(_images(32, 48), -1)
    assert at_other_size.shape == (2, 2, 97, 97)
    torch.testing.assert_close(
        at_other_size.sum(-1), torch.ones(2, 2, 97, dtype=torch.float64), atol=1e-5, rtol=0
    )
