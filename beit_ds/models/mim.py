"""Masked image modeling (seed §2.3): replace masked patch embeddings by a learnable [MASK]
embedding and predict the visual token of each masked patch.

``BeitForMaskedImageModeling`` is a ``Beit`` backbone plus ``mask_token`` and ``lm_head`` (the
backbone's final ``norm`` is the head's LayerNorm), so its state dict is unilm's pre-training
layout. The LM head runs **only on masked positions** unless ``predict_all`` (ablation).
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

    ``logits``: ``[M, V]`` for the M masked patches (``[B·N, V]`` with ``predict_all``), or the
    predicted pixels ``[M, p·p·C]``; ``accuracy``: fraction of masked patches whose token is
    predicted exactly (NaN for pixel targets); ``num_masked``: M.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    accuracy: torch.Tensor
    num_masked: int


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
        x = self.patch_embed(x)
        if bool_masked_pos is not None:
            mask = self._flat_mask(bool_masked_pos, x.shape[0])
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return self._add_cls_and_pos(x)

    def _flat_mask(self, bool_masked_pos: torch.Tensor, batch: int) -> torch.Tensor:
        mask = bool_masked_pos.reshape(bool_masked_pos.shape[0], -1)
        n = self.patch_embed.num_patches
        if mask.shape != (batch, n):
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)}: expected"
                f" [{batch}, {n}] (or [{batch}, {self.cfg.grid_size[0]}, {self.cfg.grid_size[1]}])"
                " for this model's patch grid"
            )
        return mask.bool()

    def forward(self, images: torch.Tensor, bool_masked_pos: torch.Tensor, target: torch.Tensor) -> MIMOutput:
        tokens = self.forward_features(images, bool_masked_pos)[:, 1:]  # [B, N, D]
        mask = self._flat_mask(bool_masked_pos, images.shape[0])
        if self.mim.target == "pixels":
            return self._pixel_loss(tokens, mask, target)
        return self._token_loss(tokens, mask, target)

    def _token_loss(self, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> MIMOutput:
        labels = target.reshape(target.shape[0], -1)
        if labels.shape != mask.shape:
            raise ValueError(f"token target has shape {tuple(target.shape)}: expected {tuple(mask.shape)}")
        if self.mim.predict_all:
            logits = self.lm_head(tokens).flatten(0, 1)  # [B·N, V]
            loss = F.cross_entropy(logits.float(), labels.flatten())
            hit = logits.argmax(-1) == labels.flatten()
            accuracy = hit[mask.flatten()].float().mean()
        else:
            logits = self.lm_head(tokens[mask])  # [M, V]: masked positions only
            masked_labels = labels[mask]
            loss = F.cross_entropy(logits.float(), masked_labels)
            accuracy = (logits.argmax(-1) == masked_labels).float().mean()
        return MIMOutput(loss, logits, accuracy.detach(), int(mask.sum()))

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
        select = torch.ones_like(mask) if self.mim.predict_all else mask
        pred = self.lm_head(tokens[select])
        loss = F.mse_loss(pred.float(), patches[select])
        nan = torch.tensor(float("nan"), device=pred.device)
        return MIMOutput(loss, pred, nan, int(mask.sum()))
