"""What masked image modeling predicts (seed §2.3, Fig. 1): the image, its blockwise mask
(Algorithm 1), the tokenizer's reconstruction of the true visual tokens, and the decoder's
reconstruction of the model's predicted tokens at the masked positions (true tokens elsewhere),
with the masked-token accuracy of each image.

The decoder is the tokenizer's own: our dVAE's, or DALL-E's when ``tokenizer.decoder_path``
names OpenAI's ``decoder.pkl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from beit_ds.config import MaskingConfig
from beit_ds.models.mim import BeitForMaskedImageModeling
from beit_ds.visualize.canvas import grid, mask_overlay, upsample


@dataclass
class MIMPrediction:
    """Tokens ``[B, h, w]``: the tokenizer's (``true``) and the model's argmax (``predicted``, at
    every position); ``mask [B, h, w]`` bool; ``accuracy [B]``: hits among the masked positions."""

    true: torch.Tensor
    predicted: torch.Tensor
    mask: torch.Tensor
    accuracy: torch.Tensor

    @property
    def filled(self) -> torch.Tensor:
        """The true tokens with the masked ones replaced by the predictions ``[B, h, w]``."""
        return torch.where(self.mask, self.predicted, self.true)


def blockwise_masks(
    cfg: MaskingConfig, patch_grid: tuple[int, int], count: int, seed: int = 0
) -> torch.Tensor:
    """``count`` masks ``[count, h, w]`` (bool) from ``cfg``'s generator, image ``i`` drawn with
    ``masking.mask_rng(seed, 0, i)`` (the global RNG is not used)."""
    from beit_ds.masking import build_mask_generator, mask_rng

    gen = build_mask_generator(cfg, patch_grid)
    return torch.from_numpy(np.stack([gen(mask_rng(seed, 0, i)) for i in range(count)])).bool()


@torch.no_grad()
def predict_tokens(
    model: BeitForMaskedImageModeling,
    tokenizer: Any,
    images: torch.Tensor,
    tokenizer_images: torch.Tensor,
    mask: torch.Tensor,
) -> MIMPrediction:
    """Run the MIM model on the patch view ``images [B, 3, H, W]`` with ``mask [B, h, w]``; the
    targets are ``tokenizer.encode(tokenizer_images)`` (``[B, h, w]``, the model's patch grid)."""
    weight = next(model.parameters())
    true = tokenizer.encode(tokenizer_images.to(weight.device)).to(weight.device)
    mask = mask.to(weight.device)
    if true.shape != mask.shape:
        raise ValueError(
            f"tokenizer grid {tuple(true.shape[1:])} != model patch grid {tuple(mask.shape[1:])}"
        )
    tokens = model.forward_features(images.to(weight.device, weight.dtype), mask)[:, 1:]  # [B, N, D]
    predicted = model.lm_head(tokens).argmax(-1).view_as(true)
    hits = ((predicted == true) & mask).flatten(1).sum(1).float()
    accuracy = hits / mask.flatten(1).sum(1).clamp_min(1).float()
    return MIMPrediction(true, predicted, mask, accuracy)


@torch.no_grad()
def mim_rows(
    pixels: torch.Tensor, pred: MIMPrediction, tokenizer: Any
) -> list[list[tuple[str, torch.Tensor]]]:
    """Panels per image of ``pixels [B, 3, H, W]`` in [0, 1]: image, masked image, reconstruction
    of the true tokens, reconstruction with the predicted tokens at the masked positions."""
    size = (pixels.shape[2], pixels.shape[3])
    true_rec = tokenizer.decode(pred.true).float().cpu()
    pred_rec = tokenizer.decode(pred.filled).float().cpu()
    rows = []
    for i, image in enumerate(pixels.float().cpu()):
        keep = upsample((~pred.mask[i]).float().cpu(), size) > 0
        rec_t = _resize(true_rec[i], size)
        rec_p = _resize(pred_rec[i], size)
        acc = f"acc {pred.accuracy[i].item():.2f}"
        rows.append(
            [("image", image), ("masked", mask_overlay(image, keep, 0.0)), ("tokens", rec_t), (acc, rec_p)]
        )
    return rows


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[1:]) == size:
        return image
    return torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def mim_figure(pixels: torch.Tensor, pred: MIMPrediction, tokenizer: Any, scale: int = 1) -> Image.Image:
    """``mim_rows`` as one picture, panels enlarged ``scale`` times."""
    return grid(mim_rows(pixels, pred, tokenizer), scale=scale)
