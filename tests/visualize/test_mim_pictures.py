"""MIM predictions: per-image masked-token accuracy, reconstructions, the PNG."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from beit_ds.config import MaskingConfig, MIMConfig, TokenizerConfig
from beit_ds.config_io import load_recipe
from beit_ds.models import build_mim_model, model_config
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks.weights import model_to_inspect
from beit_ds.tokenizers import build_tokenizer
from beit_ds.visualize.figures import Look, mim_png
from beit_ds.visualize.mim import blockwise_masks, mim_figure, predict_tokens


def _parts() -> tuple[torch.nn.Module, torch.nn.Module]:
    tokenizer = build_tokenizer(
        TokenizerConfig(name="dvae", path="package:demo_dvae.safetensors", image_size=32)
    )
    torch.manual_seed(0)
    model = build_mim_model(
        model_config("beit_debug_patch4_32"), MIMConfig(vocab_size=tokenizer.vocab_size)
    ).eval()
    return model, tokenizer


def test_accuracy_per_image_matches_the_model_loss_path() -> None:
    model, tokenizer = _parts()
    pixels = torch.rand(3, 3, 32, 32)
    masks = blockwise_masks(MaskingConfig(num_masking_patches=26, min_block_patches=4), (8, 8), 3, seed=5)
    assert masks.shape == (3, 8, 8) and masks.flatten(1).sum(1).tolist() == [26, 26, 26]
    assert torch.equal(
        masks, blockwise_masks(MaskingConfig(num_masking_patches=26, min_block_patches=4), (8, 8), 3, 5)
    )
    # make the head predict the true token on some masked positions: copy it from a fit
    pred = predict_tokens(model, tokenizer, pixels * 2 - 1, pixels, masks)
    for i in range(3):  # the model's own accuracy on that image alone
        out = model(pixels[i : i + 1] * 2 - 1, masks[i : i + 1], pred.true[i : i + 1])
        assert abs(out.accuracy.item() - pred.accuracy[i].item()) < 1e-7
    filled = pred.filled
    assert torch.equal(filled[masks], pred.predicted[masks]) and torch.equal(
        filled[~masks], pred.true[~masks]
    )
    # a head that always predicts the true token of image 0 scores 1.0 there
    cheat = pred.__class__(pred.true, pred.true, masks, torch.ones(3))
    img = mim_figure(pixels, cheat, tokenizer, scale=1)
    arr = np.asarray(img).astype(int)
    tokens_panel, pred_panel = (
        arr[14:46, 2 + 2 * 34 : 2 + 2 * 34 + 32],
        arr[14:46, 2 + 3 * 34 : 2 + 3 * 34 + 32],
    )
    assert np.array_equal(tokens_panel, pred_panel)  # predictions = truth: same reconstruction


def test_mim_png_reads_back(tmp_path) -> None:
    recipe = load_recipe(PretrainRecipe, "pretrain_demo_cpu", ["model.depth=1"])
    look = Look(model_to_inspect, images="demo", limit=2, out=str(tmp_path / "mim.png"), scale=2)
    path, accuracy = mim_png(recipe, look, mask_seed=0)
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert arr.shape == (2 + 2 * (64 + 12 + 2), 2 + 4 * (64 + 2), 3)
    assert arr.std() > 20 and len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy)
    masked = arr[14:78, 68:132]
    assert (masked.sum(-1) == 0).mean() > 0.3  # ~40 % of the patches blacked out
    again, _ = mim_png(recipe, Look(model_to_inspect, images="demo", limit=2, out=str(tmp_path / "again.png"), scale=2), 0)
    assert again.read_bytes() == path.read_bytes()
