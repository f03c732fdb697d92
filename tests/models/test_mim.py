"""MIM head: [MASK] substitution, mask-weighted loss (no data-dependent shapes), token / pixel
targets, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from beit_ds.config import MIMConfig
from beit_ds.masking import BlockwiseMaskGenerator
from beit_ds.models import build_mim_model, model_config
from beit_ds.models.mim import patchify

CFG = model_config("beit_debug_patch4_32", rel_pos_bias="shared")
VOCAB = 50


def _batch(b: int = 3):
    gen = BlockwiseMaskGenerator((8, 8), 26, min_block_patches=4)
    mask = torch.from_numpy(np.stack([gen(np.random.default_rng(i)) for i in range(b)]))
    return torch.randn(b, 3, 32, 32), mask, torch.randint(0, VOCAB, (b, 8, 8))


def _gathered_loss(model, images, mask, tokens):
    """The loss as the model computed it before issue 13: the LM head on the gathered masked
    tokens (a data-dependent shape), cross-entropy and accuracy over those rows."""
    feats = model.forward_features(images, mask)[:, 1:]
    logits = model.lm_head(feats[mask.flatten(1)])
    labels = tokens.flatten(1)[mask.flatten(1)]
    return logits, F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).float().mean()


def test_loss_is_cross_entropy_on_masked_positions_only():
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB))
    images, mask, tokens = _batch()
    out = model(images, mask, tokens)
    assert int(out.num_masked) == int(mask.sum()) and out.num_masked.dtype == torch.long
    assert out.logits.shape == (3 * 64, VOCAB)  # every position; the loss weights the masked ones
    logits, loss, acc = _gathered_loss(model, images, mask, tokens)
    torch.testing.assert_close(out.logits[mask.flatten()], logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=0)
    assert out.accuracy.item() == acc.item()
    # an untrained head is near-uniform: loss ≈ ln(V)
    assert abs(out.loss.item() - np.log(VOCAB)) < 0.5


def test_forward_and_loss_compile_fullgraph_without_host_syncs():
    """No data-dependent shape or ``.item()`` on the MIM path: dynamo traces forward + loss in one
    graph, equal to eager (and to the gathered loss of before, ≤ 1e-6, same accuracy)."""
    torch.manual_seed(0)
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB)).train()
    images, mask, tokens = _batch()

    def forward_and_loss(images, mask, tokens):
        out = model(images, mask, tokens)
        return out.loss, out.accuracy, out.num_masked

    compiled = torch.compile(forward_and_loss, fullgraph=True)
    loss, accuracy, num_masked = compiled(images, mask, tokens)
    eager = forward_and_loss(images, mask, tokens)
    torch.testing.assert_close(loss, eager[0], atol=1e-6, rtol=0)
    assert accuracy.item() == eager[1].item() and int(num_masked) == int(mask.sum())
    _, gathered, acc = _gathered_loss(model, images, mask, tokens)
    torch.testing.assert_close(loss, gathered, atol=1e-6, rtol=0)
    assert accuracy.item() == acc.item()


def test_unmasked_targets_do_not_change_the_loss_and_mask_token_is_used():
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB))
    images, mask, tokens = _batch()
    other = tokens.clone()
    other[~mask] = (other[~mask] + 1) % VOCAB
    assert model(images, mask, tokens).loss == model(images, mask, other).loss
    # masked patches' pixels are invisible to the model
    noisy = images.clone()
    pix_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(images)
    noisy[pix_mask] = torch.randn(int(pix_mask.sum()))
    torch.testing.assert_close(model(noisy, mask, tokens).loss, model(images, mask, tokens).loss)
    out = model(images, mask, tokens)
    out.loss.backward()
    assert model.mask_token.grad.abs().sum() > 0


def test_predict_all_ablation():
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB, predict_all=True))
    images, mask, tokens = _batch()
    out = model(images, mask, tokens)
    assert out.logits.shape == (3 * 64, VOCAB)
    expected = F.cross_entropy(out.logits, tokens.flatten())
    torch.testing.assert_close(out.loss, expected)


def test_pixel_regression_ablation_regresses_raw_pixels():
    """Seed Table 4: "predicting the raw pixels of masked patches" — the [0, 1] values, unscaled."""
    torch.manual_seed(0)
    model = build_mim_model(CFG, MIMConfig(target="pixels"))
    assert model.mim.pixel_target == "raw"  # the default
    images, mask, _ = _batch()
    target = torch.rand(3, 3, 32, 32)
    out = model(images, mask, target)
    raw = patchify(target, (8, 8))[mask.flatten(1)]
    assert out.logits.shape == (3 * 64, 48)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits[mask.flatten()], raw), atol=1e-6, rtol=0)
    # a model that predicts nothing pays E[x²] = 1/3 for U(0, 1) pixels (normalised: ≈ 1)
    assert F.mse_loss(torch.zeros_like(raw), raw).item() == pytest.approx(1 / 3, abs=0.01)


def test_pixel_regression_normalised_option():
    model = build_mim_model(CFG, MIMConfig(target="pixels", pixel_target="normalized"))
    images, mask, _ = _batch()
    target = torch.rand(3, 3, 32, 32)
    out = model(images, mask, target)
    patches = patchify(target, (8, 8))
    assert patches.shape == (3, 64, 48)
    norm = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = F.mse_loss(out.logits[mask.flatten()], norm[mask.flatten(1)])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
    assert torch.isnan(out.accuracy)
    # patchify is raster order: patch (0, 1) is columns 4..7 of rows 0..3
    torch.testing.assert_close(patches[0, 1].view(4, 4, 3), target[0, :, 0:4, 4:8].permute(1, 2, 0))


def test_training_reduces_the_loss():
    # Targets the context determines: each image has one brightness, every patch's token is that
    # brightness bucket; the visible patches reveal it, so a working MIM model learns it.
    torch.manual_seed(0)
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB))
    _, mask, _ = _batch(16)
    level = torch.arange(16) % 8
    images = (level.float() / 4 - 1).view(16, 1, 1, 1) + 0.05 * torch.randn(16, 3, 32, 32)
    tokens = (level * 5).view(16, 1, 1).expand(16, 8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(images, mask, tokens)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.35 * losses[0] and out.accuracy > 0.5, (losses[::10], out.accuracy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_autocast(dtype):
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB))
    images, mask, tokens = _batch()
    with torch.autocast("cpu", dtype=dtype):
        out = model(images, mask, tokens)
    out.loss.backward()
    half = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB)).to(dtype)
    out = half(images.to(dtype), mask, tokens)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


def test_bad_inputs_are_clear():
    model = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB))
    images, mask, tokens = _batch()
    with pytest.raises(ValueError, match=r"bool_masked_pos has shape \(3, 14, 14\): expected \[3, 64\]"):
        model(images, torch.zeros(3, 14, 14, dtype=torch.bool), tokens)
    with pytest.raises(ValueError, match="token target has shape"):
        model(images, mask, tokens[:, :4])
    with pytest.raises(ValueError, match="global_pool='none'"):
        build_mim_model(CFG.replace(global_pool="avg"))


def test_max_masked_runs_the_head_on_k_rows_with_the_same_loss():
    """``mim.max_masked = K`` (a pre-training recipe derives it from the masking target): K rows per
    image, masked first; loss and accuracy equal the gathered ones, and the shape is fixed."""
    torch.manual_seed(0)
    full = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB))
    fast = build_mim_model(CFG, MIMConfig(vocab_size=VOCAB, max_masked=26))
    fast.load_state_dict(full.state_dict())
    images, mask, tokens = _batch()
    out = fast(images, mask, tokens)
    assert out.logits.shape == (3 * 26, VOCAB) and out.positions.shape == (3, 26)
    logits, loss, acc = _gathered_loss(full, images, mask, tokens)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=0)
    assert out.accuracy.item() == acc.item()
    predicted = out.predicted_tokens(64)
    assert torch.equal(predicted[mask.flatten(1)], logits.argmax(-1))
    compiled = torch.compile(lambda *a: fast(*a).loss, fullgraph=True)
    torch.testing.assert_close(compiled(images, mask, tokens), out.loss, atol=1e-6, rtol=0)
    pixels = MIMConfig(vocab_size=VOCAB, target="pixels")
    p_full, p_fast = build_mim_model(CFG, pixels), build_mim_model(CFG, MIMConfig(**{**vars(pixels), "max_masked": 26}))
    p_fast.load_state_dict(p_full.state_dict())
    target = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(p_fast(images, mask, target).loss, p_full(images, mask, target).loss, atol=1e-6, rtol=0)


def test_pretraining_recipes_derive_max_masked_from_the_masking_target():
    from beit_ds.config_io import load_recipe
    from beit_ds.recipe import PretrainRecipe

    assert load_recipe(PretrainRecipe, "pretrain_demo_cpu").mim.max_masked == 26
    assert load_recipe(PretrainRecipe, "pretrain_base_in22k").mim.max_masked == 75
    assert load_recipe(PretrainRecipe, "ablation_predict_all").mim.max_masked is None
