"""Masked image modeling (seed §2.3): replace masked patch embeddings by a learnable [MASK]
embedding and predict the visual token of each masked patch.

``BeitForMaskedImageModeling`` is a ``Beit`` backbone plus ``mask_token`` and ``lm_head`` (the
backbone's final ``norm`` is the head's LayerNorm), so its state dict is unilm's pre-training
layout. The loss counts **only masked positions** unless ``predict_all`` (ablation): the LM head
runs on every position and a mask-weighted mean (MAE's form) replaces gathering the masked
tokens, so no shape depends on the mask and nothing waits for the device (house style rule 24;
the step compiles with ``torch.compile(fullgraph=True)``).
The pixel-regression ablation (Table 4) regresses the raw pixels of the patches with an MSE loss
(``mim.pixel_target: raw``; ``normalized`` standardises each patch first, as MAE does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import MIMConfig, ModelConfig
from beit_ds.models.beit import Beit, init_module, trunc_normal


@dataclass
class MIMOutput:
    """Result of a MIM forward pass.

    ``logits``: ``[B·N, V]`` for every patch (the loss reads the masked ones, select them with
    ``bool_masked_pos.flatten()``), or the predicted pixels ``[B·N, p·p·C]``; ``accuracy``:
    fraction of masked patches whose token is predicted exactly (NaN for pixel targets);
    ``num_masked``: M, a 0-d tensor on the model's device (``int()`` it off the hot path).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    accuracy: torch.Tensor
    num_masked: torch.Tensor


def patchify(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p·p·C]`` with ``N = grid[0]·grid[1]``, patches in raster order."""
    b, c, h, w = images.shape
    gh, gw = grid
    if h % gh or w % gw or h // gh != w // gw:
        raise ValueError(f"pixel target {h}x{w} does not split into a {gh}x{gw} grid of square patches")
    p = h // gh
    x = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, p * p * c)


class BeitForMaskedImageModeling(Beit):
    """``forward(images [B,3,H,W], bool_masked_pos [B,N] or [B,H',W'], target) -> MIMOutput``.

    ``target``: token ids ``[B, N]`` / ``[B, h, w]`` (``mim.target="tokens"``) or an image
    ``[B, C, H'', W'']`` whose patches on the model's grid are regressed (``"pixels"``).
    """

    INIT_TRUNC = "1std"  # unilm modeling_pretrain.py: trunc_normal_(std) with a=-std, b=std
    INIT_CONV = True

    def __init__(self, cfg: ModelConfig, mim: MIMConfig) -> None:
        if cfg.global_pool != "none" or cfg.num_classes:
            raise ValueError("MIM pre-training needs model.global_pool='none' and model.num_classes=0")
        self.mim = mim
        super().__init__(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        out = mim.vocab_size if mim.target == "tokens" else cfg.patch_size**2 * cfg.in_chans
        self.lm_head = nn.Linear(cfg.embed_dim, out)
        trunc_normal(self.mask_token, cfg.init_std, self.init_trunc)
        init_module(self.lm_head, cfg.init_std, self.init_trunc)

    def embed(self, x: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding with masked positions replaced by ``mask_token``, + [CLS]."""
        grid = self.runtime_grid(x)
        patches = self.patch_embed(x)
        if bool_masked_pos is not None:
            mask = self._flat_mask(bool_masked_pos, x)
            patches = torch.where(mask.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        return self._add_cls_and_pos(patches, grid)

    def _flat_mask(self, bool_masked_pos: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``bool_masked_pos`` as ``[B, N]`` bool for the patch grid of ``images``."""
        mask = bool_masked_pos.reshape(bool_masked_pos.shape[0], -1)
        batch, (gh, gw) = images.shape[0], self.patch_embed.dynamic_grid(*images.shape[-2:])
        if mask.shape != (batch, gh * gw):
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)}: expected"
                f" [{batch}, {gh * gw}] (or [{batch}, {gh}, {gw}]) for this model's patch grid"
            )
        return mask.bool()

    def forward(self, images: torch.Tensor, bool_masked_pos: torch.Tensor, target: torch.Tensor) -> MIMOutput:
        tokens = self.forward_features(images, bool_masked_pos)[:, 1:]  # [B, N, D]
        mask = self._flat_mask(bool_masked_pos, images)
        if self.mim.target == "pixels":
            return self._pixel_loss(tokens, mask, target)
        return self._token_loss(tokens, mask, target)

    def _token_loss(self, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> MIMOutput:
        labels = target.reshape(target.shape[0], -1)
        if labels.shape != mask.shape:
            raise ValueError(f"token target has shape {tuple(target.shape)}: expected {tuple(mask.shape)}")
        logits = self.lm_head(tokens).flatten(0, 1)  # [B·N, V]
        weight = mask.flatten().float()
        num_masked = weight.sum()
        if self.mim.predict_all:
            loss = F.cross_entropy(logits.float(), labels.flatten())
        else:  # the mean over masked positions, without gathering them (no data-dependent shape)
            ce = F.cross_entropy(logits.float(), labels.flatten(), reduction="none")
            loss = (ce * weight).sum() / num_masked
        hit = (logits.detach().argmax(-1) == labels.flatten()).float()
        accuracy = (hit * weight).sum() / num_masked
        return MIMOutput(loss, logits, accuracy, num_masked.long())

    def _pixel_loss(self, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> MIMOutput:
        patches = patchify(target, self.cfg.grid_size).float()
        if patches.shape[-1] != self.lm_head.out_features:
            raise ValueError(
                f"pixel target patches have {patches.shape[-1]} values: expected"
                f" {self.lm_head.out_features} (target image size = model.img_size)"
            )
        if self.mim.pixel_target == "normalized":
            mean = patches.mean(dim=-1, keepdim=True)
            var = patches.var(dim=-1, keepdim=True)
            patches = (patches - mean) / (var + self.mim.pixel_norm_eps).sqrt()
        pred = self.lm_head(tokens).flatten(0, 1)  # [B·N, p·p·C]
        patches = patches.flatten(0, 1)
        weight = mask.flatten().float()
        if self.mim.predict_all:
            loss = F.mse_loss(pred.float(), patches)
        else:  # mean over the masked patches' values, as MSE on the gathered rows
            per_patch = (pred.float() - patches).square().mean(dim=-1)
            loss = (per_patch * weight).sum() / weight.sum()
        nan = torch.full((), float("nan"), device=pred.device)
        return MIMOutput(loss, pred, nan, weight.sum().long())
